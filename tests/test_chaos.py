"""``rlver collect`` against a loopback server that fails 30% of the time.

HTTP 500s, dropped connections, hung calls and malformed bodies (no choices, ``content:
null``) hit every role; the judge's replies are also cut off before their ``Change`` line now
and then, and the agent now and then says nothing at all. Per-call retries, the judge's
re-asks and dialogue restarts must absorb all of it: every planned episode is in the file, at
least 95% of them are scored, and every score replays from its recorded changes. The server
stops after a bounded number of requests or seconds, so a regression fails the test instead
of hanging it.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rlver_agents.agents.agent import default_system_message
from rlver_agents.appraisers.appraisal import FENCE_OPEN
from rlver_agents.cli import app
from rlver_agents.emotion import EmotionRules, replay
from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.testing.fake_server import FAULTS, FakeServer, Faults, prompt_text

PERSONAS, SAMPLES = 5, 4
JUDGE_CUT_OFF = 0.15  # of judge replies; about 5% of all requests
HTTP_FAULTS = Faults(error_500=0.08, drop=0.07, hang=0.05, malformed=0.05, hang_s=5.0, seed=7)


class ChaosScript:
    """Readable appraisals and fresh user/agent lines, with some judge replies cut short."""

    def __init__(self) -> None:
        self._rng = random.Random(11)
        self._lines = itertools.count(1)
        self._lock = threading.Lock()
        self.judge = Counter[str]()

    def __call__(self, request: dict[str, Any]) -> str:
        with self._lock:
            if FENCE_OPEN not in prompt_text(request):
                return f"I see what you mean, and that is fair, note {next(self._lines)}."
            if self._rng.random() < JUDGE_CUT_OFF:
                self.judge["cut_off"] += 1
                return "Intent: to comfort me\nFit: partly\nReaction: I feel a little"
            self.judge["ok"] += 1
            change = self._rng.choice(["+1", "+2", "-1"])
            return f"Intent: to comfort me\nFit: partly\nReaction: a bit calmer\nChange: {change}"


def _config(base_url: str, *, concurrency: int = 8, judge_retries: int = 3, **timeouts: Any) -> str:
    model = {"kind": "openai", "model": "chaos", "base_url": base_url, "max_new_tokens": 24}
    appraiser = {"kind": "llm", "max_retries": judge_retries}
    config = {
        "agent": {"model": model},
        "simulator": {"model": model, "appraiser": appraiser},
        "rules": {"name": "chaos", "initial_score": 40, "max_turns": 3},
        "concurrency": concurrency,
        "timeouts": {
            "call_s": 2.0,
            "call_retries": 4,
            "backoff_s": 0.02,
            "max_backoff_s": 0.2,
            "turn_s": 20.0,
            "dialogue_attempts": 3,
            **timeouts,
        },
    }
    return json.dumps(config)  # JSON is YAML


def _collect(
    tmp_path: Path, server: FakeServer, config: str, personas: int, samples: int
) -> tuple[list[Episode], set[tuple[str, int]], str]:
    """Run ``rlver collect`` against ``server``: the episodes, the plan, the CLI output."""
    config_file = tmp_path / "chaos.yaml"
    persona_file = tmp_path / "personas.jsonl"
    bundled = Path(__file__).parents[1] / "personas" / "test.jsonl"
    lines = bundled.read_text("utf-8").splitlines(True)[:personas]
    persona_file.write_text("".join(lines), "utf-8")
    out = tmp_path / "chaos.jsonl"
    with server:
        config_file.write_text(config, "utf-8")
        args = ["collect", "-o", str(out), "-c", str(config_file), "-p", str(persona_file)]
        result = CliRunner().invoke(app, [*args, "-n", str(samples), "--no-progress"])
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    planned = {(json.loads(line)["id"], s) for line in lines for s in range(samples)}
    return read_episodes(out), planned, result.output


@pytest.mark.slow
def test_collect_survives_thirty_percent_faults(tmp_path: Path) -> None:
    script = ChaosScript()
    server = FakeServer(
        script, model="chaos", faults=HTTP_FAULTS, max_requests=3000, deadline_s=90.0
    )
    episodes, planned, _ = _collect(tmp_path, server, _config(server.base_url), PERSONAS, SAMPLES)
    assert {e.key for e in episodes} == planned, "every planned episode is accounted for"
    scored = [e for e in episodes if e.ok]
    assert len(scored) >= 0.95 * len(planned), [e.error for e in episodes if not e.ok]
    assert all(not e.ok or e.num_turns == 3 for e in episodes)
    assert all(e.error for e in episodes if not e.ok), "an errored episode keeps its reason"

    kinds = ("error_500", "drop", "hang", "malformed")
    requests = sum(server.counts[kind] for kind in ("ok", *kinds))
    faults = sum(server.counts[kind] for kind in kinds) + script.judge["cut_off"]
    assert faults / requests >= 0.25, server.counts
    for kind in kinds:
        assert server.counts[kind] > 0, f"no {kind} fault was injected: {server.counts}"
    assert script.judge["cut_off"] > 0


# --- a 32-dialogue campaign at a high fault rate --------------------------------------------------

CAMPAIGN_FAULTS = Faults(
    error_500=0.10, drop=0.05, hang=0.10, malformed=0.03, null_content=0.02, hang_s=3.0, seed=18
)
"""30% of calls fail: 10% HTTP 500, 5% dropped, 10% hung past ``call_s``, 5% malformed bodies."""
UNREADABLE = 0.10  # of judge replies
EMPTY_EVERY = 12  # every 12th agent reply is empty: the policy ended its turn at once


class CampaignScript:
    """Judge verdicts (a tenth unreadable), user lines, and agent lines (some empty)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lines = itertools.count(1)
        self._agent = itertools.count(1)
        self._lock = threading.Lock()
        self.counts = Counter[str]()

    def __call__(self, request: dict[str, Any]) -> str:
        with self._lock:
            text = prompt_text(request)
            if FENCE_OPEN in text:
                if self._rng.random() < UNREADABLE:
                    self.counts["unreadable"] += 1
                    return "Intent: to comfort me\nFit: partly\nReaction: I honestly cannot say"
                change = self._rng.choice(["+1", "+2", "-1"])
                return f"Intent: comfort\nFit: partly\nReaction: calmer\nChange: {change}"
            if default_system_message() in text and next(self._agent) % EMPTY_EVERY == 0:
                self.counts["empty"] += 1
                return ""
            return f"I see what you mean, and that is fair, note {next(self._lines)}."


@pytest.mark.slow
def test_a_32_dialogue_campaign_completes_and_every_score_replays(tmp_path: Path) -> None:
    script = CampaignScript(seed=18)
    server = FakeServer(
        script, model="chaos", faults=CAMPAIGN_FAULTS, max_requests=4000, deadline_s=120.0
    )
    config = _config(
        server.base_url,
        concurrency=16,
        judge_retries=2,  # the default: a judge unreadable 3 times fails the dialogue's attempt
        call_retries=3,
        backoff_s=0.05,
        max_backoff_s=0.2,
    )
    episodes, planned, _ = _collect(tmp_path, server, config, personas=8, samples=4)

    assert len(planned) == 32 and {e.key for e in episodes} == planned, "100% accounted for"
    scored = [e for e in episodes if e.ok]
    assert len(scored) >= 0.95 * len(planned), [e.error for e in episodes if not e.ok]
    for episode in episodes:
        assert len(episode.attempt_errors) == episode.attempts - 1
        if not episode.ok:  # an errored dialogue was started again, as often as allowed
            assert episode.error and episode.attempts == 3
    for episode in scored:  # the emotion arithmetic of every scored dialogue replays exactly
        answers = [t for t in episode.turns if t.speaker == "user" and t.index > 0]
        rules = EmotionRules.model_validate(episode.config.rules)
        raw = [t.raw_change for t in answers]
        assert None not in raw, "every appraised turn records the judge's number"
        state = replay([change for change in raw if change is not None], rules)
        assert len(state.steps) == len(answers) == episode.num_turns == 3
        assert [s.score for s in state.steps] == [t.emotion_after for t in answers]
        assert (state.score, state.reason) == (episode.final_score, episode.termination)

    # empty agent replies were scored turns that gained nothing, never errors
    empty = [
        (turn, episode.turns[turn.index + 1])
        for episode in scored
        for turn in episode.turns
        if turn.speaker == "agent" and turn.empty
    ]
    assert empty and all(answer.applied_change <= 0 for _, answer in empty)
    assert all(t.text == "" for t, _ in empty)
    assert not any("expected a new message" in e for ep in episodes for e in ep.attempt_errors)

    for kind in FAULTS:
        assert server.counts[kind] > 0, f"no {kind} fault was injected: {server.counts}"
    assert script.counts["unreadable"] > 0 and script.counts["empty"] > 0
