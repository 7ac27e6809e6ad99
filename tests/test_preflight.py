"""The checks before a run: keys, URLs, servers that answer and serve the model, personas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlver_agents.config import RunConfig
from rlver_agents.fake_server import FakeServer, Faults, free_port
from rlver_agents.personas import load_split
from rlver_agents.preflight import PreflightError, check_run, check_servers


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
