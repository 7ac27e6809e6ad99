"""Lexical copy detection shared by the simulated user and the embedding appraiser."""

from __future__ import annotations

import pytest

from rlver_agents.repetition import USER_COPY_THRESHOLD, copied_fraction, copied_line

USER = "I'm exhausted and fed up with the night shifts, and nobody at work even notices."


@pytest.mark.parametrize(
    ("text", "earlier", "low", "high"),
    [
        (USER, [USER], 1.0, 1.0),
        ("i'm EXHAUSTED and fed up with the night shifts, and nobody at work even notices!",
         [USER], 1.0, 1.0),
        ("It sounds like you're exhausted. Nobody noticing must sting.", [USER], 0.0, 0.3),
        ("It sounds like you're exhausted and fed up with the night shifts.", [USER], 0.5, 0.75),
        ("ok fine", ["Ok, fine!"], 1.0, 1.0),
        ("ok fine", ["ok, fine, whatever"], 0.0, 0.0),
        ("", [USER], 0.0, 0.0),
        ("我今天很累，不想说话。", ["我今天很累，什么都不想说话。"], 1.0, 1.0),
        ("你一定很累吧，辛苦了。", ["我今天很累，什么都不想说话。"], 0.0, 0.0),
    ],
)  # fmt: skip
def test_copied_fraction(text: str, earlier: list[str], low: float, high: float) -> None:
    assert low <= copied_fraction(text, earlier) <= high


def test_copied_line_names_the_source() -> None:
    earlier = ["Hello there.", USER]
    assert copied_line(USER.upper(), earlier, USER_COPY_THRESHOLD) == USER
    assert copied_line("Tell me more about the shifts?", earlier, USER_COPY_THRESHOLD) is None
