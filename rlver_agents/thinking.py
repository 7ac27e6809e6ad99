"""Split "think then say" output into the private thought and the visible reply.

Every client and the agent share this one function, so the visible text, the kept thought
and the format-violation flag (used by the format reward) always agree.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

FALLBACK_REPLY = "Sorry, I lost my train of thought there. Could you tell me a bit more?"
FALLBACK_REPLY_ZH = "抱歉，我刚才走神了。能再多跟我说一点吗？"


class FormatViolation(StrEnum):
    """Ways a think-then-say output can be malformed."""

    MISSING_THINK = "missing_think"
    UNCLOSED_THINK = "unclosed_think"
    EMPTY_REPLY = "empty_reply"
    STRAY_TAG = "stray_tag"


class ThinkSplit(BaseModel):
    """The result of splitting one model output."""

    model_config = ConfigDict(frozen=True)

    thought: str | None
    reply: str
    violation: FormatViolation | None = None

    @property
    def well_formed(self) -> bool:
        return self.violation is None


def split_think(
    text: str, *, require_think: bool = True, fallback: str = FALLBACK_REPLY
) -> ThinkSplit:
    """Split ``<think>…</think> reply``.

    - Well formed: one leading think block and a non-empty reply after it.
    - No tags at all: the whole text is the reply; a violation when ``require_think``.
    - An unclosed ``<think>``: everything after it is thought, the reply is the fallback.
    - Empty reply after the block: the fallback is shown.
    - Tags left in the reply (a second block, a lone ``</think>``): the thought keeps what
      precedes the last ``</think>``, the reply keeps the rest with tags removed.
    """
    stripped = text.strip()
    if OPEN_TAG not in stripped and CLOSE_TAG not in stripped:
        violation = FormatViolation.MISSING_THINK if require_think else None
        if not stripped:
            return ThinkSplit(thought=None, reply=fallback, violation=FormatViolation.EMPTY_REPLY)
        return ThinkSplit(thought=None, reply=stripped, violation=violation)

    if CLOSE_TAG not in stripped:
        thought = stripped.split(OPEN_TAG, 1)[1].strip()
        prefix = stripped.split(OPEN_TAG, 1)[0].strip()
        return ThinkSplit(
            thought=thought or None,
            reply=prefix or fallback,
            violation=FormatViolation.UNCLOSED_THINK,
        )

    head, _, tail = stripped.rpartition(CLOSE_TAG)
    thought = head.replace(OPEN_TAG, "").replace(CLOSE_TAG, "\n").strip() or None
    reply = tail.replace(OPEN_TAG, "").strip()
    single_block = head.startswith(OPEN_TAG) and head.count(OPEN_TAG) == 1 and CLOSE_TAG not in head
    if not reply:
        return ThinkSplit(thought=thought, reply=fallback, violation=FormatViolation.EMPTY_REPLY)
    if not single_block or OPEN_TAG in tail:
        return ThinkSplit(thought=thought, reply=reply, violation=FormatViolation.STRAY_TAG)
    return ThinkSplit(thought=thought, reply=reply)


def visible_text(text: str) -> str:
    """What the other side of a dialogue sees of ``text``: think blocks removed, stripped.

    ``""`` when nothing visible is left (an empty reply, whitespace, only a thought). The
    simulated user hears this and the episode records it, so both agree on an empty turn.
    """
    stripped = text.strip()
    if OPEN_TAG in stripped or CLOSE_TAG in stripped:
        return split_think(stripped, require_think=False, fallback="").reply
    return stripped
