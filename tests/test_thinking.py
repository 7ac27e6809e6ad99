"""`split_think` on well-formed and malformed think-then-say outputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlver_agents.thinking import (
    CLOSE_TAG,
    FALLBACK_REPLY,
    FALLBACK_REPLY_ZH,
    OPEN_TAG,
    FormatViolation,
    split_think,
)

V = FormatViolation

# (id, text, expected thought, expected reply, expected violation)
CASES: list[tuple[str, str, str | None, str, FormatViolation | None]] = [
    (
        "well_formed",
        "<think>She sounds exhausted.</think>That sounds like a really long week.",
        "She sounds exhausted.",
        "That sounds like a really long week.",
        None,
    ),
    (
        "surrounding_whitespace",
        "\n  <think>\n  lonely, wants company \n</think>\n\n  Want to grab a coffee?  \n",
        "lonely, wants company",
        "Want to grab a coffee?",
        None,
    ),
    (
        "multiline_reply_kept",
        "<think>plan</think>Oh no.\nThat must have hurt.",
        "plan",
        "Oh no.\nThat must have hurt.",
        None,
    ),
    ("empty_thought_block", "<think></think>Hey, I'm here.", None, "Hey, I'm here.", None),
    (
        "zh_well_formed",
        "<think>她很委屈，需要被理解。</think>听起来你真的受委屈了，想说说吗？",
        "她很委屈，需要被理解。",
        "听起来你真的受委屈了，想说说吗？",
        None,
    ),
    (
        "no_tags",
        "I'm so sorry, that's rough.",
        None,
        "I'm so sorry, that's rough.",
        V.MISSING_THINK,
    ),
    (
        "thinking_without_tags",
        "Thought: he is angry. Reply: That would annoy me too.",
        None,
        "Thought: he is angry. Reply: That would annoy me too.",
        V.MISSING_THINK,
    ),
    (
        "uppercase_tags_are_not_tags",
        "<THINK>sad</THINK>Hugs.",
        None,
        "<THINK>sad</THINK>Hugs.",
        V.MISSING_THINK,
    ),
    ("empty_output", "", None, FALLBACK_REPLY, V.EMPTY_REPLY),
    ("whitespace_only", "  \n\t ", None, FALLBACK_REPLY, V.EMPTY_REPLY),
    (
        "unclosed",
        "<think>she is upset and I should",
        "she is upset and I should",
        FALLBACK_REPLY,
        V.UNCLOSED_THINK,
    ),
    ("unclosed_empty", "<think>", None, FALLBACK_REPLY, V.UNCLOSED_THINK),
    (
        "reply_then_unclosed_think",
        "Hi there. <think>was that enough",
        "was that enough",
        "Hi there.",
        V.UNCLOSED_THINK,
    ),
    (
        "empty_reply",
        "<think>comfort her</think>   \n",
        "comfort her",
        FALLBACK_REPLY,
        V.EMPTY_REPLY,
    ),
    ("empty_block_and_reply", "<think></think>", None, FALLBACK_REPLY, V.EMPTY_REPLY),
    (
        "think_after_reply",
        "I'm sorry.<think>was that ok?</think>",
        "I'm sorry.was that ok?",
        FALLBACK_REPLY,
        V.EMPTY_REPLY,
    ),
    (
        "lone_close_tag",
        "feeling low</think>Sorry to hear that.",
        "feeling low",
        "Sorry to hear that.",
        V.STRAY_TAG,
    ),
    (
        "nested_blocks",
        "<think>outer <think>inner</think> still</think>Tell me more.",
        "outer inner\n still",
        "Tell me more.",
        V.STRAY_TAG,
    ),
    (
        "stray_open_tag_in_reply",
        "<think>x</think>Hello<think>there",
        "x",
        "Hellothere",
        V.STRAY_TAG,
    ),
    (
        "zh_unclosed",
        "<think>他好像很生气",
        "他好像很生气",
        FALLBACK_REPLY,
        V.UNCLOSED_THINK,
    ),
]


@pytest.mark.parametrize(
    ("text", "thought", "reply", "violation"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_split_cases(
    text: str, thought: str | None, reply: str, violation: FormatViolation | None
) -> None:
    split = split_think(text)
    assert split.thought == thought
    assert split.reply == reply
    assert split.violation == violation
    assert split.well_formed is (violation is None)


def test_two_blocks_keep_the_last_reply_and_flag_stray_tags() -> None:
    split = split_think("<think>first</think>Hi<think>second</think>Hey you.")
    assert split.reply == "Hey you."
    assert split.violation == V.STRAY_TAG
    assert split.thought is not None
    assert "first" in split.thought
    assert "second" in split.thought


def test_no_tags_is_well_formed_when_thinking_is_not_required() -> None:
    split = split_think("Just a reply.", require_think=False)
    assert (split.thought, split.reply, split.violation) == (None, "Just a reply.", None)


def test_fallback_is_chosen_by_the_caller() -> None:
    split = split_think("<think>她", fallback=FALLBACK_REPLY_ZH)
    assert split.reply == FALLBACK_REPLY_ZH
    assert split.violation == V.UNCLOSED_THINK


_plain = st.text(min_size=0, max_size=40).filter(lambda s: "<" not in s and ">" not in s)


@given(thought=_plain, reply=_plain.filter(lambda s: s.strip() != ""))
def test_well_formed_round_trip(thought: str, reply: str) -> None:
    split = split_think(f"{OPEN_TAG}{thought}{CLOSE_TAG}{reply}")
    assert split.thought == (thought.strip() or None)
    assert split.reply == reply.strip()
    assert split.violation is None


@given(text=st.lists(st.sampled_from([OPEN_TAG, CLOSE_TAG, "a", " ", "\n", "好"])).map("".join))
def test_reply_is_never_empty_and_never_shows_a_tag(text: str) -> None:
    split = split_think(text)
    assert split.reply.strip()
    assert OPEN_TAG not in split.reply
    assert CLOSE_TAG not in split.reply
