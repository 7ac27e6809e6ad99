"""docs/reproducing-rlver.md: its settings tables agree with the configs and the rule presets,
and its snippets work."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlver_agents.config import RunConfig
from rlver_agents.emotion import RLVER_TRAIN, SAGE, EmotionRules, replay
from rlver_agents.episodes.episode import Episode, EpisodeConfig
from rlver_agents.episodes.episode_file import write_episodes

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "reproducing-rlver.md"
HEADER = ["setting", "RLVER", "config", "key", "ours", "why"]
NONE = "—"


def settings_rows() -> list[dict[str, str]]:
    """Every row of the page's settings tables, keyed by the header."""
    rows: list[dict[str, str]] = []
    columns: list[str] | None = None
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells == HEADER:
            columns = cells
        elif columns is not None and not set("".join(cells)) <= set("- "):
            assert len(cells) == len(columns), f"a row with {len(cells)} cells: {line}"
            rows.append(dict(zip(columns, cells, strict=True)))
    return rows


def code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"expected one code span, got {cell!r}"
    return match.group(1)


def configured(config: str, key: str) -> Any:
    """The value the project ships for ``key`` in ``config``."""
    if config.startswith("preset:"):
        document = EmotionRules.preset(config.removeprefix("preset:")).model_dump(mode="json")
    elif config.startswith("verl/"):
        path = ROOT / "training" / "verl" / "configs" / config.removeprefix("verl/")
        document = yaml.safe_load(path.read_text())
    else:
        document = yaml.safe_load((ROOT / "training" / "configs" / config).read_text())
    node: Any = document
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{config} has no {key}"
        node = node[part]
    return node


ROWS = [row for row in settings_rows() if row["config"] != NONE]


def test_the_tables_cover_both_qwen_configs_and_the_presets() -> None:
    configs = [code(row["config"]) for row in ROWS]
    assert configs.count("qwen2.5-7b-ppo.yaml") >= 25
    assert configs.count("qwen2.5-7b-grpo.yaml") >= 12
    assert {"preset:rlver_train", "preset:sage", "verl/rlver_base.yaml"} <= set(configs)
    pairs = [(code(row["config"]), code(row["key"])) for row in ROWS]
    assert len(pairs) == len(set(pairs)), "a key is listed twice"


@pytest.mark.parametrize("row", ROWS, ids=[f"{code(r['config'])}:{code(r['key'])}" for r in ROWS])
def test_each_value_is_the_shipped_one(row: dict[str, str]) -> None:
    expected = yaml.safe_load(code(row["ours"]))
    assert configured(code(row["config"]), code(row["key"])) == expected, row["setting"]


def test_the_arithmetic_the_page_states() -> None:
    """The page's worked numbers, replayed: RLVER adds -15 and +25 as they come."""
    text = GUIDE.read_text(encoding="utf-8")
    assert "−15 is −15 and +25 is +25" in text
    assert [step.score for step in replay([-15, 25], RLVER_TRAIN).steps] == [15, 40]
    assert [step.score for step in replay([-15, 25], SAGE).steps] == [30, 40]


def block_after(heading: str, language: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block after {heading!r}"
    return textwrap.dedent(match.group(1))


def test_the_nine_turn_sage_rules_load_in_a_run_configuration() -> None:
    snippet = yaml.safe_load(block_after("## Evaluating for a comparable Sentient score", "yaml"))
    rules = RunConfig.model_validate(snippet).emotion_rules()
    assert rules.model_dump(exclude={"name", "max_turns"}) == SAGE.model_dump(
        exclude={"name", "max_turns"}
    )
    assert rules.max_turns == 9


def test_the_comparison_snippet_names_what_differs(tmp_path: Path) -> None:
    script = tmp_path / "compare.py"
    script.write_text(block_after("## Comparing two runs", "python"))
    runs = []
    for name, rules in (("sage", SAGE), ("rlver", RLVER_TRAIN)):
        config = EpisodeConfig(rules=rules.model_dump(mode="json"), seed=7)
        episode = Episode(persona_id="p1", config=config, termination="max_turns")
        runs.append(write_episodes(tmp_path / f"{name}.jsonl", [episode]))
    done = subprocess.run(
        [sys.executable, str(script), *map(str, runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert "rules.initial_score: 40 -> 30" in lines
    assert "rules.clip_changes: True -> False" in lines
    assert "rules.floor: 0 -> None" in lines
    assert "rules.max_turns: 10 -> 9" in lines
    assert "rules.name: 'sage' -> 'rlver_train'" in lines
    assert len(lines) == 5  # cap, bands, seed and the rest agree
