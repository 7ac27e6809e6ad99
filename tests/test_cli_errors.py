"""Every way the CLI is known to fail ends in ``error:`` lines and an exit code, never a traceback.

Exit code 2: the run could not start (bad option, file, configuration, persona source, or a
server that fails the checks). Exit code 1: it ran and every episode or dialogue errored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from filelock import FileLock
from typer.testing import CliRunner

from rlver_agents.cli import app
from rlver_agents.emotion import RLVER_TRAIN, SAGE, TerminationReason
from rlver_agents.episodes.episode import Episode, EpisodeConfig
from rlver_agents.testing.fake_server import FakeServer, Faults, free_port

ROOT = Path(__file__).parents[1]
TEST_SPLIT = ROOT / "personas" / "test.jsonl"
SAGE_FIXTURE = ROOT / "tests" / "fixtures" / "sage" / "results_small.jsonl"
runner = CliRunner()


def _invoke(*args: str, stdin: str | None = None) -> Result:
    result = runner.invoke(app, list(args), input=stdin)
    assert "Traceback" not in result.output, result.output
    return result


def _assert_error(result: Result, *fragments: str, code: int = 2) -> None:
    """Exit ``code``; stderr is only ``error:`` lines; every fragment appears in them."""
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def _episode(persona_id: str, rules: dict[str, Any]) -> str:
    episode = Episode(
        persona_id=persona_id,
        termination=TerminationReason.MAX_TURNS,
        final_score=40,
        config=EpisodeConfig(rules=rules),
    )
    return episode.model_dump_json() + "\n"


@pytest.fixture
def two_personas(tmp_path: Path) -> Path:
    path = tmp_path / "two.jsonl"
    path.write_text("".join(TEST_SPLIT.read_text("utf-8").splitlines(True)[:2]), "utf-8")
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeServer, Path]]:
    """A loopback server and a run configuration whose every role talks to it, quickly."""
    with FakeServer(lambda _: "Change: +1", model="m", deadline_s=120) as server:
        model = {"kind": "openai", "model": "m", "base_url": server.base_url}
        config = {
            "agent": {"model": model},
            "simulator": {"model": model, "appraiser": {"kind": "llm"}},
            "rules": {"name": "short", "max_turns": 2},
            "timeouts": {"call_s": 2, "call_retries": 1, "backoff_s": 0, "dialogue_attempts": 1},
        }
        path = tmp_path / "served.yaml"
        path.write_text(json.dumps(config), "utf-8")
        yield server, path


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--concurrency", "-1"), ("--concurrency", "0"), ("--n", "-2"), ("--n", "0")],
)
def test_collect_refuses_counts_below_one(tmp_path: Path, option: str, value: str) -> None:
    result = _invoke("collect", "-o", str(tmp_path / "run.jsonl"), option, value)
    _assert_error(result, f"{option} must be at least 1, got {value}")
    assert not (tmp_path / "run.jsonl").exists()


def test_simulate_refuses_n_below_one() -> None:
    _assert_error(_invoke("simulate", "-n", "0"), "--n must be at least 1, got 0")


@pytest.mark.parametrize("command", ["collect", "eval"])
def test_out_pointing_at_a_directory(tmp_path: Path, command: str) -> None:
    _assert_error(_invoke(command, "-o", str(tmp_path)), f"--out {tmp_path} is a directory")


# --- run files --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["collect", "eval"])
def test_a_corrupt_middle_line_of_a_run_file(tmp_path: Path, command: str) -> None:
    out = tmp_path / "run.jsonl"
    sage = SAGE.model_dump(mode="json")
    out.write_text(
        _episode("en-test-001", sage) + '{"persona_id": "en-te\n' + _episode("en-test-002", sage)
    )
    _assert_error(_invoke(command, "-o", str(out)), f"{out}, line 2: invalid JSON")


def test_a_run_file_recorded_under_other_rules(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text(_episode("en-test-001", RLVER_TRAIN.model_dump(mode="json")))
    result = _invoke("collect", "-o", str(out))
    _assert_error(result, str(out), "was recorded with rules 'rlver_train'", "write to another")


def test_a_second_collector_on_a_locked_file(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    with FileLock(f"{out}.lock"):
        result = _invoke("collect", "-o", str(out))
    _assert_error(result, f"{out} is being written by another collector")


# --- configuration and persona files ------------------------------------------------------------


def test_a_config_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 1\n# café\n".encode("latin-1"))
    _assert_error(_invoke("simulate", "-c", str(path)), f"{path}, line 2: not UTF-8")


def test_a_config_error_names_each_field_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("concurrency: 0\nsimulator: {appraiser: {kind: oracle}}\n", "utf-8")
    result = _invoke("simulate", "-c", str(path))
    _assert_error(result, f"{path}: field simulator.appraiser.kind", f"{path}: field concurrency")
    assert len(result.stderr.splitlines()) == 2


@pytest.mark.parametrize(
    "args", [["chat"], ["simulate"], ["collect", "-o", "run.jsonl"], ["eval", "-o", "run.jsonl"]]
)
def test_an_empty_persona_file(tmp_path: Path, args: list[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _invoke(
        *[str(tmp_path / a) if a == "run.jsonl" else a for a in args], "-p", str(empty)
    )
    _assert_error(result, f"{empty}: holds no personas")


def test_a_profile_with_a_null_player(tmp_path: Path) -> None:
    path = tmp_path / "profiles.jsonl"
    good = {"id": "a", "player": "Name: Ann. 30.", "scene": "Lost her job.", "task": "Be heard."}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "player": None}))
    result = _invoke("simulate", "-p", str(path))
    _assert_error(result, f"{path}, line 2, field 'player': must be non-empty text, not null")


def test_score_sage_on_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "results.jsonl"
    empty.write_text("\n")
    _assert_error(_invoke("score-sage", str(empty)), f"{empty}: holds no dialogues")


@pytest.mark.parametrize(("field", "value"), [("emo_point", 250), ("history[2].emotion-point", -5)])
def test_a_sage_score_outside_0_to_100(tmp_path: Path, field: str, value: int) -> None:
    lines = SAGE_FIXTURE.read_text("utf-8").splitlines(True)
    record = json.loads(lines[1])
    if field == "emo_point":
        record["emo_point"] = value
    else:
        record["history"][2]["emotion-point"] = value
    path = tmp_path / "results.jsonl"
    path.write_text(lines[0] + json.dumps(record) + "\n", "utf-8")
    result = _invoke("score-sage", str(path))
    _assert_error(
        result, f"{path}, line 2, field '{field}': emotion scores run from 0 to 100, got {value}"
    )


# --- servers ------------------------------------------------------------------------------------


def _config_for(tmp_path: Path, **model: Any) -> Path:
    spec = {"kind": "openai", "model": "m", **model}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"agent": {"model": spec}}), "utf-8")
    return path


def test_an_unset_api_key_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLVER_CLI_KEY", raising=False)
    config = _config_for(tmp_path, base_url="http://127.0.0.1:9/v1", api_key_env="RLVER_CLI_KEY")
    result = _invoke("collect", "-o", str(tmp_path / "run.jsonl"), "-c", str(config))
    _assert_error(result, f"{config}: agent.model.api_key_env: RLVER_CLI_KEY is not set")


def test_a_base_url_that_is_not_a_url(tmp_path: Path) -> None:
    config = _config_for(tmp_path, base_url="127.0.0.1:8000")
    result = _invoke("eval", "-o", str(tmp_path / "run.jsonl"), "-c", str(config))
    _assert_error(result, f"{config}: agent.model.base_url: '127.0.0.1:8000' is not an http(s)")


def test_a_closed_port(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = _config_for(tmp_path, base_url=url)
    result = _invoke("collect", "-o", str(tmp_path / "run.jsonl"), "-c", str(config))
    _assert_error(result, f"agent.model.base_url: the server at {url} cannot be reached")


@pytest.mark.parametrize("command", [["simulate"], ["chat"], ["chat", "--role", "user"]])
def test_a_server_answering_500(
    served: tuple[FakeServer, Path], two_personas: Path, command: list[str]
) -> None:
    server, config = served
    server.faults = Faults(broken_status=500)
    result = _invoke(*command, "-c", str(config), "-p", str(two_personas), stdin="hello\n")
    _assert_error(result, f"the server at {server.base_url} answered GET /models with HTTP 500")


def test_simulate_when_every_chat_call_fails(
    served: tuple[FakeServer, Path], two_personas: Path
) -> None:
    server, config = served
    server.faults = Faults(error_500=1.0)
    result = _invoke("simulate", "-c", str(config), "-p", str(two_personas), "-n", "1")
    assert result.exit_code == 1
    failure = (
        "dialogue failed: RuntimeError: ModelCallError: agent call to model 'm' at "
        f"{server.base_url}"
    )
    assert failure in result.stderr
    assert result.stderr.splitlines()[-1] == "error: all 1 dialogue(s) failed"


def test_chat_when_the_agent_call_fails(
    served: tuple[FakeServer, Path], two_personas: Path
) -> None:
    server, config = served
    server.faults = Faults(error_500=1.0)
    args = ["chat", "--role", "user", "-c", str(config), "-p", str(two_personas)]
    result = _invoke(*args, stdin="My boss yelled at me.\n")
    _assert_error(
        result,
        f"error: the chat stopped: ModelCallError: agent call to model 'm' at {server.base_url}"
        " failed 2 time(s); last: InternalServerError",
        code=1,
    )


def test_collect_exits_1_when_every_episode_errored(
    served: tuple[FakeServer, Path], two_personas: Path, tmp_path: Path
) -> None:
    server, config = served
    server.faults = Faults(error_500=1.0)
    out = tmp_path / "run.jsonl"
    args = ["collect", "-o", str(out), "-c", str(config), "-p", str(two_personas), "-n", "2"]
    result = _invoke(*args, "--no-progress")
    _assert_error(result, "all 4 episodes errored; 4 of them with: ModelCallError", code=1)
    assert '"errors": 4' in result.stdout
    assert len(out.read_text().splitlines()) == 4, "every errored episode is recorded"
