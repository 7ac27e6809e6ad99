"""How much of a line is copied from earlier lines of the dialogue.

Shared by the simulated user (which must not parrot) and the embedding appraiser (which must
not reward an agent for parroting). Lexical on purpose: a reflective paraphrase ("it sounds
like you're exhausted") is close in meaning to the user's line but is not a copy. Both copy
thresholds live here, side by side, with the reason they differ.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[\u4e00-\u9fff]|[^\W_]+", re.UNICODE)
NGRAM = 4

USER_COPY_THRESHOLD = 0.5
"""The reply guard writes a simulated user's line again when this share of it is copied.

A user has no reason to repeat anyone, so half a copied line is already a parrot."""

AGENT_ECHO_THRESHOLD = 0.75
"""The embedding appraiser caps an agent message at a loss from this share copied on.

Higher than the user's threshold on purpose: reflective listening reuses the user's own words
("it sounds like you're exhausted and fed up with the night shifts" copies about 60% of
"I'm exhausted and fed up with the night shifts"), and that must not be punished as parroting.
"""


def _words(text: str) -> list[str]:
    """Lower-cased words; each CJK character counts as a word."""
    return _WORD.findall(text.casefold())


def copied_fraction(text: str, earlier: Sequence[str], n: int = NGRAM) -> float:
    """The share of ``text``'s words covered by ``n``-grams that occur in an earlier line.

    A line shorter than ``n`` words counts as copied only if it equals an earlier line.
    """
    words = _words(text)
    if not words:
        return 0.0
    previous = [_words(line) for line in earlier]
    if len(words) < n:
        return 1.0 if any(words == line for line in previous) else 0.0
    seen = {tuple(line[i : i + n]) for line in previous for i in range(len(line) - n + 1)}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if tuple(words[i : i + n]) in seen:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(words)


def copied_line(text: str, earlier: Sequence[str], threshold: float) -> str | None:
    """The first earlier line of which ``text`` copies at least ``threshold``, if any."""
    for line in earlier:
        if copied_fraction(text, [line]) >= threshold:
            return line
    return None
