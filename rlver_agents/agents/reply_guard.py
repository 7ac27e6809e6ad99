"""The simulated user's reply guard: keeps a small model's lines usable, and says so.

A 135M simulator rambles, copies earlier lines and sometimes writes nothing. With the guard
on, a reply is trimmed to a few sentences, a copied or empty reply is written again with a
note naming the copied line, and an in-character stock line for the current band is the last
resort. A served simulator (the paper's setting) runs without the guard, so every reply is the
model's own words. Either way each reply records where its text came from, as
``metadata["reply_origin"]`` (see :data:`ReplyOrigin`), and so does the episode's turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rlver_agents import prompts
from rlver_agents.repetition import USER_COPY_THRESHOLD, copied_fraction, copied_line

ReplyOrigin = Literal["model", "model_retry", "trimmed", "stock", "persona", "closing"]
"""Where a user line came from: the model's first draft, a later draft, a draft cut short by
the guard, a stock line, the persona's own first line (``first_talk``), or a stock closing
line written without the model (``closing="stock"``)."""

REPLY_ORIGIN_KEY = "reply_origin"
"""The message metadata key that carries the :data:`ReplyOrigin`."""

UNGUARDED_RETRIES = 1
"""Without a guard an empty reply is asked for again this many times; then the dialogue fails
with that reason rather than putting words in the model's mouth."""

_SENTENCE = re.compile(r".+?(?:[.!?。！？…]+[\"'”’」]?(?=\s|$)|[。！？]+|$)", re.DOTALL)


class ReplyGuard(BaseModel):
    """Every threshold the guard applies, in one place.

    The copy threshold is :data:`rlver_agents.repetition.USER_COPY_THRESHOLD`; the embedding
    appraiser's parrot cap sits next to it there, higher on purpose (a reflective listener may
    reuse the user's words; the user has no reason to).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_sentences: int = Field(
        3, ge=1, description="A longer reply keeps only its first this many sentences."
    )
    copy_threshold: float = Field(
        USER_COPY_THRESHOLD,
        gt=0,
        le=1,
        description="Share of a reply's words copied from one earlier line that makes it a copy.",
    )
    retries: int = Field(
        1, ge=0, description="Drafts written again after a copied or empty one, then a stock line."
    )

    def trim(self, text: str) -> str:
        """The first ``max_sentences`` sentences; people text in short bursts."""
        sentences = [m.group(0).strip() for m in _SENTENCE.finditer(text) if m.group(0).strip()]
        if len(sentences) <= self.max_sentences:
            return text
        return re.sub(r"(?<=[。！？…])\s+", "", " ".join(sentences[: self.max_sentences]))

    def copied(self, text: str, earlier: Sequence[str]) -> str | None:
        """The earlier line ``text`` copies, if it copies one."""
        return copied_line(text, earlier, self.copy_threshold)


def stock_reply(key: str, language: prompts.Language, earlier: Sequence[str]) -> str:
    """The stock line for ``key`` (a band, or ``opening``) that least repeats the dialogue.

    Ties go to the first line in ``prompts/<language>/stock_replies.md``, so an unused line is
    preferred and the choice is deterministic.
    """
    lines = prompts.section("stock_replies", key, language).splitlines()
    return min(lines, key=lambda line: copied_fraction(line, earlier))
