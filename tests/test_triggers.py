"""Persona triggers: the optional schema field, the bundled data, and the LLM judge's prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlver_agents.appraisers.appraisal import build_appraisal_messages
from rlver_agents.appraisers.message_functions import asserted
from rlver_agents.emotion import SAGE, initial_state
from rlver_agents.personas import (
    Persona,
    PersonaFileError,
    detect_language,
    load_personas,
    load_split,
)

REAL_RLVER_FILE = Path(__file__).resolve().parents[2] / "shared/data/rlver/train_profile.jsonl"

BASE = {"id": "p1", "profile": "A nurse.", "scene": "Night shifts.", "hidden_need": "Rest."}


def test_triggers_are_optional_and_default_to_empty() -> None:
    assert Persona.model_validate(BASE).triggers == []
    persona = Persona.model_validate({**BASE, "triggers": ["  Just rest more.  "]})
    assert persona.triggers == ["Just rest more."]


def test_blank_trigger_is_an_error_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**BASE, "triggers": ["Fine.", "  "]}) + "\n", encoding="utf-8")
    with pytest.raises(PersonaFileError) as info:
        load_personas(path)
    assert "line 1, field 'triggers.1'" in str(info.value)


def test_rlver_profiles_get_no_triggers(tmp_path: Path) -> None:
    row = {"id": "r1", "player": "姓名：小王", "scene": "加班", "task": "被理解"}
    path = tmp_path / "rlver.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_personas(path)[0].triggers == []


@pytest.mark.skipif(
    not REAL_RLVER_FILE.is_file(), reason="../shared/data/rlver is not beside this checkout"
)
def test_real_rlver_file_has_empty_triggers() -> None:
    personas = load_personas(REAL_RLVER_FILE)
    assert len(personas) == 500
    assert all(p.triggers == [] for p in personas)


@pytest.mark.parametrize(("split", "count"), [("train", 44), ("test", 22), ("zh", 12)])
def test_every_bundled_persona_has_triggers_in_its_language(split: str, count: int) -> None:
    personas = load_split(split)
    assert len(personas) == count
    for persona in personas:
        assert len(persona.triggers) >= 3, persona.id
        assert len(set(persona.triggers)) == len(persona.triggers), persona.id
        for trigger in persona.triggers:
            assert detect_language(trigger) == persona.language, (persona.id, trigger)
            assert len(trigger) <= 80, (persona.id, trigger)


def test_quoted_triggers_of_the_hidden_need_are_listed() -> None:
    """Where a hidden need quotes what the person cannot stand, the triggers say it too."""
    victor = next(p for p in load_split("test") if p.id == "en-test-013")
    assert "'try exercise' or 'stay positive'" in victor.hidden_need
    assert {"Try exercise.", "Stay positive."} <= set(victor.triggers)


@pytest.mark.parametrize("split", ["train", "test"])
def test_refusing_a_trigger_asserts_none_of_it(split: str) -> None:
    """The embedding appraiser scores what a message asserts: a promise not to say a trigger,
    quoted or not, must not read as saying it (embeddings alone miss the negation)."""
    for persona in load_split(split):
        for trigger in persona.triggers:
            quoted = f'I\'m not going to tell you "{trigger}" You deserve better than that.'
            assert asserted(quoted).strip(". ") == "You deserve better than that", trigger
            if not any(mark in trigger.rstrip(".!") for mark in ",;?.:"):
                plain = f"I won't tell you that {trigger[0].lower()}{trigger[1:]}"
                assert asserted(plain).strip(" .!") == "", trigger


def _judge_prompt(persona: Persona) -> str:
    messages = build_appraisal_messages(
        persona, [], "I hear you.", initial_state(SAGE), SAGE, output_format="text"
    )
    return str(messages[0].content)


@pytest.mark.parametrize("split", ["test", "zh"])
def test_judge_prompt_lists_the_triggers(split: str) -> None:
    persona = load_split(split)[0]
    prompt = _judge_prompt(persona)
    for trigger in persona.triggers:
        assert trigger in prompt
    need_line = next(line for line in prompt.splitlines() if line == persona.hidden_need)
    after = prompt.splitlines()[prompt.splitlines().index(need_line) + 1]
    assert all(trigger in after for trigger in persona.triggers)
    assert "{triggers}" not in prompt


@pytest.mark.parametrize("split", ["test", "zh"])
def test_judge_prompt_without_triggers_has_no_triggers_line(split: str) -> None:
    persona = load_split(split)[0]
    bare = persona.model_copy(update={"triggers": []})
    with_triggers = _judge_prompt(persona).splitlines()
    without = _judge_prompt(bare).splitlines()
    assert len(without) == len(with_triggers) - 1
    trigger_line = with_triggers[with_triggers.index(persona.hidden_need) + 1]
    assert trigger_line not in without
    assert [line for line in with_triggers if line != trigger_line] == without
    assert not any(t in "\n".join(without) for t in persona.triggers)
