"""Persona schema and loaders, including the real RLVER profile file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rlver_agents.personas import (
    Character,
    Difficulty,
    PersonaFileError,
    detect_language,
    load_personas,
    load_split,
)

REAL_RLVER_FILE = Path(__file__).resolve().parents[2] / "shared/data/rlver/train_profile.jsonl"

GOOD = {
    "id": "p1",
    "name": "Ada",
    "language": "en",
    "profile": "A nurse.",
    "scene": "Night shifts.",
    "hidden_need": "To be told she did enough.",
    "character": "passive",
    "traits": ["quiet"],
    "difficulty": "hard",
    "topic": "work",
    "first_talk": "long night.",
}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return path


@pytest.mark.skipif(
    not REAL_RLVER_FILE.is_file(), reason="../shared/data/rlver is not beside this checkout"
)
def test_real_rlver_file_loads_completely() -> None:
    personas = load_personas(REAL_RLVER_FILE)
    assert len(personas) == 500
    assert {p.language for p in personas} == {"zh"}
    counts = Counter(p.character for p in personas)
    assert set(counts) == {Character.NEGATIVE, Character.PASSIVE, Character.AVOIDANT}
    assert sum(counts.values()) == 500
    first = personas[0]
    assert first.name == "王丽娜"
    assert first.hidden_need.startswith("你想获得")
    assert first.traits == ("内向", "谦逊", "愤懑")


def test_rlver_record_maps_fields(tmp_path: Path) -> None:
    row = {
        "id": "x",
        "player": "* 姓名：李雷\n* 年龄：30岁",
        "scene": "他失业了。",
        "main_cha": "回避型",
        "cha_group": ["冷漠"],
        "task": "你想被理解",
        "first_talk": "唉。",
    }
    (persona,) = load_personas(write_jsonl(tmp_path / "p.jsonl", [row]))
    assert persona.character == Character.AVOIDANT
    assert persona.hidden_need == "你想被理解"
    assert persona.name == "李雷" and persona.language == "zh" and persona.first_talk == "唉。"


def test_yaml_loader(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "personas:\n  - id: a\n    profile: p\n    scene: s\n    hidden_need: h\n", "utf-8"
    )
    (persona,) = load_personas(path)
    assert persona.difficulty is Difficulty.NORMAL and persona.language == "en"


@pytest.mark.parametrize(
    ("rows", "line", "field"),
    [
        ([GOOD, {**GOOD, "id": "p2", "difficulty": "brutal"}], 2, "difficulty"),
        ([{k: v for k, v in GOOD.items() if k != "hidden_need"}], 1, "hidden_need"),
        ([GOOD, {**GOOD, "id": "p3", "colour": "red"}], 2, "colour"),
        ([{"id": "r", "player": "x", "scene": "y"}], 1, "task"),
    ],
)
def test_bad_records_name_file_line_and_field(
    tmp_path: Path, rows: list[dict[str, object]], line: int, field: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(PersonaFileError) as info:
        load_personas(path)
    assert info.value.line == line and info.value.field == field
    assert str(path) in str(info.value) and f"line {line}" in str(info.value)


def test_invalid_json_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n", "utf-8")
    with pytest.raises(PersonaFileError, match=r"line 2: invalid JSON"):
        load_personas(path)
    with pytest.raises(PersonaFileError, match="duplicate persona id"):
        load_personas(write_jsonl(tmp_path / "dup.jsonl", [GOOD, GOOD]))
    with pytest.raises(PersonaFileError, match="no such file"):
        load_personas(tmp_path / "missing.jsonl")


def test_language_detection() -> None:
    assert detect_language("我今天很难过") == "zh"
    assert detect_language("I'm fine, really.") == "en"


BUNDLED_TOPICS = {
    "work",
    "family",
    "partners",
    "friendship",
    "health",
    "study",
    "money",
    "grief",
    "loneliness",
    "identity",
}


def test_bundled_english_splits() -> None:
    train, test = load_split("train"), load_split("test")
    assert len(train) >= 40 and len(test) >= 20
    assert not {p.id for p in train} & {p.id for p in test}
    for split in (train, test):
        assert {p.language for p in split} == {"en"}
        assert {p.topic for p in split} == BUNDLED_TOPICS
        pairs = {(p.character, p.difficulty) for p in split}
        assert len(pairs) == 9, "every character x difficulty combination appears"
        assert all(p.first_talk for p in split)


def test_bundled_chinese_split() -> None:
    zh = load_split("zh")
    assert len(zh) >= 10
    assert {p.language for p in zh} == {"zh"}
    assert {p.character for p in zh} == {"negative", "passive", "avoidant"}
