"""``rlver collect`` against a loopback server that fails 30% of the time.

HTTP 500s, dropped connections, hung calls and bodies without choices hit every role; the
judge's replies are also cut off before their ``Change`` line now and then. Per-call retries,
the judge's re-asks and dialogue restarts must absorb all of it: every planned episode is in
the file and at least 95% of them are scored. The server stops after a bounded number of
requests or seconds, so a regression fails the test instead of hanging it.
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

from rlver_agents.appraisal import FENCE_OPEN
from rlver_agents.cli import app
from rlver_agents.episode_file import read_episodes
from rlver_agents.fake_server import FakeServer, Faults, prompt_text

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


def _config(base_url: str) -> str:
    model = {"kind": "openai", "model": "chaos", "base_url": base_url, "max_new_tokens": 24}
    config = {
        "agent": {"model": model},
        "simulator": {"model": model, "appraiser": {"kind": "llm", "max_retries": 3}},
        "rules": {"name": "chaos", "initial_score": 40, "max_turns": 3},
        "concurrency": 8,
        "timeouts": {
            "call_s": 2.0,
            "call_retries": 4,
            "backoff_s": 0.02,
            "max_backoff_s": 0.2,
            "turn_s": 20.0,
            "dialogue_attempts": 3,
        },
    }
    return json.dumps(config)  # JSON is YAML


@pytest.mark.slow
def test_collect_survives_thirty_percent_faults(tmp_path: Path) -> None:
    script = ChaosScript()
    config = tmp_path / "chaos.yaml"
    personas = tmp_path / "personas.jsonl"
    bundled = Path(__file__).parents[1] / "personas" / "test.jsonl"
    personas.write_text("".join(bundled.read_text("utf-8").splitlines(True)[:PERSONAS]), "utf-8")
    out = tmp_path / "chaos.jsonl"
    server = FakeServer(
        script, model="chaos", faults=HTTP_FAULTS, max_requests=3000, deadline_s=90.0
    )
    with server:
        config.write_text(_config(server.base_url), "utf-8")
        args = ["collect", "-o", str(out), "-c", str(config), "-p", str(personas)]
        result = CliRunner().invoke(app, [*args, "-n", str(SAMPLES), "--no-progress"])

    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    episodes = read_episodes(out)
    planned = {
        (json.loads(line)["id"], s)
        for line in personas.read_text("utf-8").splitlines()
        for s in range(SAMPLES)
    }
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
