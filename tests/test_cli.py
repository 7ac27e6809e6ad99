"""The ``rlver`` CLI through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlver_agents.cli import app
from rlver_agents.config import ConfigError, load_config
from rlver_agents.episodes.episode_file import read_episodes

SAGE_FIXTURES = Path(__file__).parent / "fixtures" / "sage"
runner = CliRunner()

# A fast offline run: the embedded model with short outputs and two-turn dialogues.
FAST_CONFIG = """
agent:
  model: {kind: embedded, max_new_tokens: 12}
simulator:
  model: {kind: embedded, max_new_tokens: 12}
rules: {name: quick, initial_score: 40, max_turns: 2}
concurrency: 2
"""


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(FAST_CONFIG, "utf-8")
    return path


def test_score_sage_json_prints_one_object_per_file() -> None:
    files = [SAGE_FIXTURES / "results_small.jsonl", SAGE_FIXTURES / "results_small.jsonl"]
    result = runner.invoke(app, ["score-sage", *map(str, files), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(lines) == 2
    assert set(lines[0]) == {"file", "n", "mean", "success", "failure", "replay_mismatches"}
    assert lines[0]["n"] == 4 and lines[0]["replay_mismatches"] == 1


def test_score_sage_table_lists_mismatches() -> None:
    result = runner.invoke(app, ["score-sage", str(SAGE_FIXTURES / "results_small.jsonl")])
    assert result.exit_code == 0, result.output
    assert "mismatch" in result.output and "sage-wrong" in result.output


def test_score_sage_bad_file_names_line_and_field() -> None:
    result = runner.invoke(app, ["score-sage", str(SAGE_FIXTURES / "bad_change.jsonl")])
    assert result.exit_code == 2
    assert "line 3" in result.output and "change" in result.output


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[simulator.appraiser]\nkind = "oracle"\n', "utf-8")
    with pytest.raises(ConfigError, match=r"field simulator\.appraiser\.kind"):
        load_config(path)
    result = runner.invoke(app, ["simulate", "--config", str(path)])
    assert result.exit_code == 2
    assert "simulator.appraiser.kind" in result.output


def test_config_reads_toml_and_secrets_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        '[agent.model]\nkind = "openai"\nmodel = "Qwen/Qwen2.5-7B-Instruct"\n'
        'base_url = "http://127.0.0.1:8000/v1"\napi_key_env = "RLVER_TEST_KEY"\n',
        "utf-8",
    )
    config = load_config(path)
    assert config.agent.model.kind == "openai" and config.simulator.model.kind == "embedded"
    with pytest.raises(ValueError, match="RLVER_TEST_KEY"):
        config.agent.model.api_key()


@pytest.mark.slow
def test_simulate_prints_emotion_after_every_turn(fast_config: Path) -> None:
    result = runner.invoke(app, ["simulate", "--config", str(fast_config), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "final emotion" in result.output
    assert "agent" in result.output and "user" in result.output
    assert "1 dialogues, mean final emotion" in result.output


@pytest.mark.slow
def test_collect_eval_and_report(fast_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    personas = tmp_path / "two.jsonl"
    test_split = (Path(__file__).parents[1] / "personas" / "test.jsonl").read_text("utf-8")
    personas.write_text("\n".join(test_split.splitlines()[:2]) + "\n", "utf-8")
    args = ["--config", str(fast_config), "--personas", str(personas), "--no-progress"]

    result = runner.invoke(app, ["collect", "--out", str(out), "-n", "2", *args])
    assert result.exit_code == 0, result.output
    episodes = read_episodes(out)
    assert sorted(e.key for e in episodes) == sorted(
        (pid, s) for pid in ("en-test-001", "en-test-002") for s in (0, 1)
    )
    assert all(e.num_turns <= 2 for e in episodes)

    result = runner.invoke(app, ["eval", "--out", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["n_episodes"] == 2, "eval scores the planned sample of each persona only"

    result = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.md").stat().st_size > 0


@pytest.mark.slow
def test_chat_as_the_agent_shows_the_emotion(fast_config: Path) -> None:
    args = ["chat", "--role", "agent", "--persona", "en-test-001", "--config", str(fast_config)]
    result = runner.invoke(app, args, input="That sounds really hard.\nI'm here.\n")
    assert result.exit_code == 0, result.output
    assert "dialogue over: max_turns" in result.output
    assert result.output.count(" B ") + result.output.count(" C ") >= 2


@pytest.mark.slow
def test_chat_as_the_user_tracks_the_agent(fast_config: Path) -> None:
    args = ["chat", "--role", "user", "--persona", "en-test-001", "--config", str(fast_config)]
    result = runner.invoke(app, args, input="My boss yelled at me.\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "Your hidden need" in result.output and "agent" in result.output
    assert "dialogue over" not in result.output


def test_chat_unknown_persona_is_a_clear_error(fast_config: Path) -> None:
    result = runner.invoke(app, ["chat", "--persona", "nobody", "--config", str(fast_config)])
    assert result.exit_code == 2 and "no persona with id 'nobody'" in result.output


def test_the_shipped_vllm_config_builds_server_clients() -> None:
    from rlver_agents.builders import ClientPool, agent_factory, user_factory
    from rlver_agents.episodes.episode import EpisodeContext
    from rlver_agents.models.openai_compat import ReasoningOpenAIChatCompletionClient
    from rlver_agents.models.retrying import RetryingChatCompletionClient
    from rlver_agents.personas import load_split

    config = load_config(Path(__file__).parents[1] / "examples" / "vllm.yaml")
    assert config.agent.model.family == "qwen2.5" and config.simulator.appraiser.kind == "llm"
    pool = ClientPool()
    context = EpisodeContext(persona=load_split("test")[0], rules=config.emotion_rules(), seed=1)
    user, agent = user_factory(config, pool)(context), agent_factory(config, pool)(context)
    clients = {
        "simulator": user.model_client,
        "judge": user.appraiser.model_client,  # type: ignore[attr-defined]
        "agent": agent.model_client,  # type: ignore[attr-defined]
    }
    for role, client in clients.items():
        assert isinstance(client, RetryingChatCompletionClient) and client.role == role
        assert isinstance(client.inner, ReasoningOpenAIChatCompletionClient)
        assert client.policy.timeout_s == config.timeouts.call_s
    shared = clients["simulator"].inner
    assert clients["judge"].inner is shared, "one connection pool per server spec"
    again = user_factory(config, pool)(context)
    assert again.model_client.inner is shared  # type: ignore[attr-defined]
    assert clients["agent"].inner is not shared


def test_the_agent_settings_choose_whether_thoughts_are_kept(tmp_path: Path) -> None:
    from rlver_agents.builders import ClientPool, agent_factory
    from rlver_agents.episodes.episode import EpisodeContext
    from rlver_agents.personas import load_split

    path = tmp_path / "run.yaml"
    path.write_text("agent:\n  think: false\n  keep_thoughts: true\n")
    with pytest.raises(ConfigError, match="keep_thoughts needs think"):
        load_config(path)
    path.write_text("agent:\n  think: true\n  keep_thoughts: true\n")
    config = load_config(path)
    context = EpisodeContext(persona=load_split("test")[0], rules=config.emotion_rules(), seed=1)
    agent = agent_factory(config, ClientPool())(context)
    assert agent.keep_thoughts  # type: ignore[attr-defined]
    # a run scores what the model produced: a reply-less output is sent empty, not papered over
    assert agent.say_fallback is False  # type: ignore[attr-defined]


def test_the_trained_policy_example_reads_the_cpu_training_output() -> None:
    """``examples/eval-trained.yaml`` benchmarks what the CPU GRPO config writes, sampled as
    in training."""
    from training.config import load_train_config

    root = Path(__file__).parents[1]
    config = load_config(root / "examples" / "eval-trained.yaml")
    trained = load_train_config(root / "training" / "configs" / "smollm2-cpu-grpo.yaml")
    assert config.agent.model.kind == "local"
    assert Path(config.agent.model.model or "") == Path(trained.output_dir) / "final"
    assert config.agent.model.temperature == trained.rollout.temperature
    assert config.agent.model.max_new_tokens == trained.rollout.max_new_tokens
    assert config.agent.model.stop == trained.rollout.stop
    assert config.agent.system_message == trained.policy.system_message
    # the same user voice and appraiser; the closing line may be the model's (it scores nothing)
    assert config.simulator.model == trained.simulator.model
    assert config.simulator.appraiser == trained.simulator.appraiser
