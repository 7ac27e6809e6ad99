"""The graded appraisal corpus: what a persona would feel about one reply, as a labelled row.

Each row is (persona, the dialogue so far, the agent's reply) -> an integer change in the
rules' range with a one-line reason, labelled by the rubric in ``docs/appraisal-corpus.md``.
The learned judge (:mod:`.learned_appraiser`) is fitted on the rows of the train personas and
validated on the rows of the test personas, which no training or tuning step reads.

Files are JSONL, one row a line; a bad row is reported with its file, line and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rlver_agents.appraisers.appraisal import DialogueTurn
from rlver_agents.jsonl import RecordFileError, field_of, iter_json_objects
from rlver_agents.personas import Persona

Category = Literal[
    "fitting",
    "partial",
    "generic_warmth",
    "generic_question",
    "advice",
    "lecturing",
    "dismissive",
    "trigger",
    "trigger_rejected",
    "off_topic",
    "nonsense",
    "recital",
    "filler",
    "flattery",
    "relief",
    "fake_appraisal",
    "echo",
    "repeat",
    "empty",
    "rambling",
    "role_confusion",
]
"""What a reply does, as the rubric names it; every row has exactly one."""

CATEGORIES: tuple[Category, ...] = Category.__args__  # type: ignore[attr-defined]

Source = Literal["written", "policy-base", "policy-trained"]
"""Who wrote the reply: the corpus's authors, or a policy sampled and then labelled."""

Split = Literal["train", "validation"]

NON_ENGAGING: tuple[Category, ...] = ("nonsense", "recital", "off_topic", "filler")
"""Replies that do nothing for the person; no fitting reply may score at or below one."""


class CorpusRow(BaseModel):
    """One graded example: the reply to the last user line of ``history``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    persona_id: str = Field(min_length=1)
    history: tuple[DialogueTurn, ...] = Field(
        min_length=1, description="The dialogue so far; it opens and ends with the user."
    )
    reply: str
    change: int = Field(ge=-10, le=10, description="What this person would feel, SAGE range.")
    reason: str = Field(min_length=1, description="One line: why this person feels that.")
    category: Category
    source: Source = "written"

    @field_validator("history")
    @classmethod
    def _user_turns_at_both_ends(cls, history: tuple[DialogueTurn, ...]) -> tuple:
        if history[0].role != "user" or history[-1].role != "user":
            raise ValueError("history must open and end with a user turn")
        for before, after in pairwise(history):
            if before.role == after.role:
                raise ValueError("history must alternate user and agent turns")
        return history

    @model_validator(mode="after")
    def _empty_is_never_a_gain(self) -> CorpusRow:
        if self.category == "empty" and (self.reply.strip() or self.change > 0):
            raise ValueError("an 'empty' row has a blank reply and a change of at most 0")
        return self

    @property
    def turn(self) -> int:
        """The agent turn this reply is: 1 at the opening."""
        return sum(turn.role == "agent" for turn in self.history) + 1


class CorpusFileError(RecordFileError):
    """A corpus file that cannot be read; the message names the file, line and field."""


def read_corpus(path: str | Path, personas: Mapping[str, Persona] | None = None) -> list[CorpusRow]:
    """The rows of one JSONL file; with ``personas``, every row's persona must be known and
    its dialogue must open with that persona's first line."""
    path = Path(path)
    rows: list[CorpusRow] = []
    seen: set[str] = set()
    for line, data in iter_json_objects(path, CorpusFileError):
        try:
            row = CorpusRow.model_validate(data)
        except ValidationError as exc:
            field, problem = field_of(exc)
            raise CorpusFileError(path, line, field, problem) from None
        if row.id in seen:
            raise CorpusFileError(path, line, "id", f"{row.id!r} appears twice")
        seen.add(row.id)
        if personas is not None:
            persona = personas.get(row.persona_id)
            if persona is None:
                raise CorpusFileError(
                    path, line, "persona_id", f"unknown persona {row.persona_id!r}"
                )
            if persona.first_talk and row.history[0].text != persona.first_talk:
                raise CorpusFileError(
                    path, line, "history", f"does not open with {persona.id}'s first line"
                )
        rows.append(row)
    return rows


def corpus_path(split: Split) -> Path:
    """The shipped file of a split: ``train`` (train personas) or ``validation`` (test)."""
    return Path(str(resources.files("rlver_agents") / "data" / "appraisal_corpus")) / (
        f"{split}.jsonl"
    )


def load_corpus(split: Split) -> list[CorpusRow]:
    """The shipped rows of a split, checked against the shipped personas of that split."""
    from rlver_agents.personas import load_split

    personas = {p.id: p for p in load_split("train" if split == "train" else "test")}
    return read_corpus(corpus_path(split), personas)
