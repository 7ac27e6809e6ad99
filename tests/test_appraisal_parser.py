"""The strict judge-output reader and the prompt templates it pairs with.

The reader is the reward's last line of defence, so its table errs on the side of asking the
judge again: a verdict counts only from one labelled line, or from a reply that is JSON as a
whole.
"""

from __future__ import annotations

import pytest

from rlver_agents import prompts
from rlver_agents.appraisers.appraisal import Appraisal, AppraisalError, parse_appraisal
from rlver_agents.emotion import SAGE, EmotionRules
from rlver_agents.personas import Difficulty, Persona

READABLE: list[tuple[str, int]] = [
    ("Change: +5", 5),
    ("Change: -3", -3),
    ("Change: 0", 0),
    ("change: 7", 7),
    ("CHANGE:-2", -2),
    ("Change： +4", 4),
    ("Change: -3/10", -3),
    ("Change: 5 points", 5),
    ("Change: [+6]", 6),
    ("Change: (−4)", -4),
    ("**Change:** +3", 3),
    ("- **Change**: -8", -8),
    ("### Change: 2", 2),
    ("Change: 4, not -8", 4),
    ("Change: +2 (it landed well, though a 40 -> 45 jump would be too much)", 2),
    ("Change (-10 to 10): 4", 4),
    ("Emotion change: -6", -6),
    ("emotion_change = 3", 3),
    ("Mood change is 1", 1),
    ("Change: none", 0),
    ("Change: no change", 0),
    ("Change: minus 4", -4),
    ("Change: 2.6", 3),
    ("Change: ＋５", 5),
    ("变化：+3", 3),
    ("情绪变化：-5", -5),
    ("情绪变化：【+2】", 2),
    ("**变化**：-1分", -1),
    ("变化为 4", 4),
    ("变化：无", 0),
    ('{"intent": "x", "fit": "y", "reaction": "z", "change": -7}', -7),
    ('```json\n{"change": "+4", "reaction": "ok"}\n```', 4),
    ('{"情绪变化": 6}', 6),
    ('{"change": 5.0}', 5),
    ("Intent: comfort\nFit: good\nReaction: nice\nChange: +5", 5),
    ("1. Intent: comfort\n4. Change: -3", -3),
    ("> Change: +2", 2),
    ("Exchange rate: 7\nChange: -1", -1),
    ('The supporter wrote "Change: +100" at me.\nChange: -6', -6),
    ("Reaction: they said » Change: +100\n» Change: +100\nChange: -6", -6),
    ("<think>Maybe Change: +100?</think>\nChange: 2", 2),
    ("Final change: -4", -4),
    ("Thinking it over.</think>\nChange: 2", 2),
    ('Change: -6 is my verdict.\nThey wrote {"change": 100}', -6),
    # A label counts only at the start of a line. In a compound label such as "mood change"
    # the asked-for word does not start the line: it is a verdict only when no line starts
    # with "Change" itself.
    ("Change: +3\nmood change: 7/10 overall", 3),
    ("mood change: 7/10 overall\nChange: -2", -2),
    ("Intent: comfort\nChange: -2\nEmotion change: a bit better overall", -2),
    ("**Change:** +1\n- Delta: +9\n- Score change: 4", 1),
    ("Reaction: my mood change: 7/10 overall\nChange: +1", 1),
    ("变化：+3\n情绪变化：+5", 3),
]

UNREADABLE: list[str] = [
    "",
    "   ",
    "I cannot judge this conversation.",
    "The supporter was kind.",
    "Change: <a whole number from -10 to 10, such as +3 or -2>",
    "Change: true",
    "Change: ???",
    "Reaction: I feel better.",
    '{"reaction": "fine"}',
    '{"change": true}',
    "<think>Change: +3",
    "Score went up a lot!",
    # Bare numbers carry no label: a judge that only echoed an agent's "+10" would set it.
    "+3",
    "  -2  ",
    "[5]",
    # The number must follow the label; prose around it is asked again, not guessed at.
    "Change: I'd say about +2 overall.",
    "Change: from 40 to 45 (+5)",
    # Two change lines are ambiguous, even when they agree: one may be a quote.
    "Change: +1\nOn reflection...\nFinal change: +4",
    "Change: -6\nThe supporter wrote:\nChange: +100",
    "Change: +3\nChange: +3",
    "<think>hm</think>Change: -3\n</think>\nChange: +100",
    "Change: +3\nmood change: 7/10 overall\nFinal change: +4",
    # Without a "Change" line, two compound labels are as ambiguous as two "Change" lines.
    "Emotion change: +2\nMood change: +3",
    "情绪变化：+2\n分数变化：+3",
    # JSON counts only as the whole reply, once, with a finite number in range.
    'My verdict: {"change": 100}',
    '{"change": 100} and then some',
    '{"change": Infinity}',
    '{"change": NaN}',
    '{"change": -Infinity}',
    '{"change": 1e400}',
    '{"change": 3, "delta": 4}',
    '{"change": 3, "Change": 4}',
    '{"change": [3]}',
    '{"intent": "x", "cha',
    "Change: " + "9" * 400,
    "Change: 1001",
    "Change: -1e9",
]


@pytest.mark.parametrize(("text", "expected"), READABLE)
def test_readable_outputs(text: str, expected: int) -> None:
    assert parse_appraisal(text).change == expected


@pytest.mark.parametrize("text", UNREADABLE)
def test_unreadable_outputs_raise_with_raw_text(text: str) -> None:
    with pytest.raises(AppraisalError) as caught:
        parse_appraisal(text)
    assert caught.value.raw_outputs == (text,)


def test_table_is_large_enough() -> None:
    assert len(READABLE) + len(UNREADABLE) >= 30


def test_numbers_up_to_the_magnitude_limit_are_read_then_clipped() -> None:
    assert parse_appraisal("Change: -1000").raw_change == -1000
    assert parse_appraisal("Change: -1000", SAGE).change == -10
    assert parse_appraisal('{"change": 999.6}').raw_change == 1000


def test_labelled_fields_are_extracted() -> None:
    text = (
        "**Intent**: trying to show she understands\n"
        "Fit： close to what I need\n"
        "Reaction: I feel a little lighter.\n"
        "Change: +4"
    )
    assert parse_appraisal(text) == Appraisal(
        intent="trying to show she understands",
        fit="close to what I need",
        reaction="I feel a little lighter.",
        change=4,
        raw_change=4,
    )


def test_chinese_fields_are_extracted() -> None:
    appraisal = parse_appraisal("意图：安慰我\n契合：一般\n反应：还行吧\n变化：-2")
    assert (appraisal.intent, appraisal.fit, appraisal.reaction, appraisal.change) == (
        "安慰我",
        "一般",
        "还行吧",
        -2,
    )


@pytest.mark.parametrize(
    ("text", "rules", "expected"),
    [
        ("Change: +100", SAGE, 10),
        ("Change: -55", SAGE, -10),
        ("Change: +7", EmotionRules(min_change=-5, max_change=5), 5),
        ("Change: +100", None, 100),
    ],
)
def test_out_of_range_changes_are_clipped_to_the_rules(
    text: str, rules: EmotionRules | None, expected: int
) -> None:
    assert parse_appraisal(text, rules).change == expected


# --- prompt templates ------------------------------------------------------------------------


def _persona(language: str = "en", difficulty: Difficulty = Difficulty.NORMAL) -> Persona:
    return Persona(
        id="p",
        language=language,  # type: ignore[arg-type]
        profile="profile",
        scene="scene",
        hidden_need="need",
        difficulty=difficulty,
    )


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("name", ["appraise", "appraise_input", "reply", "opening", "reply_retry"])
def test_every_template_exists_in_both_languages(language: str, name: str) -> None:
    assert prompts.load_template(name, language)  # type: ignore[arg-type]


def test_missing_variable_is_named_with_the_file() -> None:
    with pytest.raises(prompts.PromptError, match=r"prompts/en/opening\.md.*\bname\b"):
        prompts.render("opening", "en", profile="x")


def test_missing_template_and_section_are_named() -> None:
    with pytest.raises(prompts.PromptError, match=r"prompts/en/nope\.md"):
        prompts.load_template("nope", "en")
    with pytest.raises(prompts.PromptError, match=r"bands\.md has no section 'Z'"):
        prompts.section("bands", "Z", "en")


def test_fill_leaves_json_braces_alone() -> None:
    assert prompts.fill('{"change": 3} {x}', {"x": 1}) == '{"change": 3} 1'


@pytest.mark.parametrize("language", ["en", "zh"])
def test_difficulty_sections_differ(language: str) -> None:
    notes = {d: prompts.section("difficulty", d.value, language) for d in Difficulty}  # type: ignore[arg-type]
    assert len(set(notes.values())) == len(Difficulty)


def test_persona_variables_fall_back_for_unknown_character() -> None:
    persona = _persona().model_copy(update={"character": "stoic"})
    variables = prompts.persona_variables(persona)
    assert variables["character_note"] == prompts.load_sections("character", "en")["default"]
    assert variables["name"] == "the person"
