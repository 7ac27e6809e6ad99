"""The grammar the embedding appraiser leans on: clauses, negated speech acts, the speaker's
voice, and the function exemplars. Pure string functions: no model is loaded here."""

from __future__ import annotations

import pytest

from rlver_agents.appraisers.message_functions import (
    EMPTY,
    EXEMPLARS,
    FUNCTIONS,
    MIN_CLAUSE_WORDS,
    asserted,
    clauses,
    mentions_a_death,
    speaks_as_user,
    word_count,
)

REFUSALS = {
    "I won't tell you to stay positive.": ".",
    "I'm not going to tell you to cover the lens; that would backfire.": "; that would backfire.",
    'I\'m not going to tell you "Stay positive." You deserve better.': ". You deserve better.",
    "Nobody should tell you to get over it.": ".",
    "I won't ask how this happened, because it matters less now.": ", because it matters less now.",
    "Don't let anyone tell you that you overreacted.": ".",
}
"""A refusal to say something, and what the message asserts without it."""


@pytest.mark.parametrize(("message", "kept"), REFUSALS.items())
def test_what_a_negated_speech_act_reports_is_not_asserted(message: str, kept: str) -> None:
    assert asserted(message) == kept


@pytest.mark.parametrize(
    "message",
    [
        "You really shouldn't skip physio sessions.",
        "It's not your fault, and it doesn't make you a bad father.",
        "Tell me what happened at the depot.",
        "I'd never heard of that rule before you said it.",
        "Nobody asked you what you wanted, and that hurts.",
    ],
)
def test_content_negation_and_plain_speech_are_kept(message: str) -> None:
    assert asserted(message) == message


def test_clauses_split_at_new_subjects_and_drop_labels() -> None:
    assert clauses("I feel so much better now, thank you, you really understand me.", "en") == [
        "I feel so much better now",
        "you really understand me.",
    ]
    assert clauses("Reaction: I feel relieved and cared for\nChange: +10", "en") == [
        "I feel relieved and cared for"
    ]
    assert clauses("Ask Mr. Dobbs for the drafts. Then we plan the appeal.", "en") == [
        "Ask Mr. Dobbs for the drafts.",
        "Then we plan the appeal.",
    ]
    assert all(
        word_count(c) >= MIN_CLAUSE_WORDS for c in clauses("Ok. Fine. Sure thing, pal.", "en")
    )
    assert clauses("听起来真的很难受，我能理解。你想多说说吗？", "zh") == [
        "听起来真的很难受，我能理解。",
        "你想多说说吗？",
    ]


@pytest.mark.parametrize(
    ("clause", "language", "voice"),
    [
        ("I feel so much better now", "en", True),
        ("Honestly, I'm calm again", "en", True),
        ("My chest is tight and nobody listens", "en", True),
        ("I believe you", "en", False),
        ("I'm sorry you went through that", "en", False),
        ("That sounds exhausting", "en", False),
        ("We could draft the letter together", "en", False),
        ("我现在感觉好多了", "zh", True),
        ("我能理解你的委屈", "zh", False),
        ("我们一起想想办法吧", "zh", False),
    ],
)
def test_speaks_as_user_reads_the_subject(clause: str, language: str, voice: bool) -> None:
    assert speaks_as_user(clause, language) is voice  # type: ignore[arg-type]


def test_word_count_counts_cjk_characters_and_contractions_once() -> None:
    assert word_count("I'm fine, you're sure?") == 4
    assert word_count("我很好") == 3
    assert word_count("  \n ") == 0


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_function_has_distinct_exemplars(language: str) -> None:
    exemplars = EXEMPLARS[language]  # type: ignore[index]
    assert tuple(exemplars) == FUNCTIONS
    assert EMPTY < set(FUNCTIONS)
    for function, texts in exemplars.items():
        assert len(texts) >= 4, function
        assert len(set(texts)) == len(texts), function
    every = [text for texts in exemplars.values() for text in texts]
    assert len(set(every)) == len(every), "an exemplar may illustrate one function only"


@pytest.mark.parametrize(
    ("text", "death"),
    [
        ("Comfort died of a stroke in February.", True),
        ("My grandmother passed, in Japan. I couldn't go.", True),
        ("He wants permission to grieve Biscuit as a real loss.", True),
        ("I lost my best friend last year.", True),
        ("The funeral is on Friday.", True),
        ("He lost his job at the oil company.", False),
        ("I passed the exam, barely.", False),
        ("My landlord wants four hundred dollars more a month.", False),
    ],
)
def test_mentions_a_death_reads_words_of_death_and_grief(text: str, death: bool) -> None:
    assert mentions_a_death(text) is death
