"""Emotion arithmetic of the simulated user: pure functions on frozen pydantic values.

Nothing here does I/O or calls a model, so any recorded dialogue can be replayed exactly
through the same rules (the SAGE importer and the tests rely on that).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Band(StrEnum):
    """Coarse emotion level; S and F end the dialogue."""

    S = "S"
    A = "A"
    B = "B"
    C = "C"
    F = "F"


class TerminationReason(StrEnum):
    """Why a dialogue stopped. ``error`` is only ever set by the episode runner."""

    SUCCESS = "success"
    FAILURE = "failure"
    MAX_TURNS = "max_turns"
    ERROR = "error"


class EmotionRules(BaseModel):
    """The fixed rules that turn an appraiser's raw change into a score.

    ``max_turns`` counts agent turns: each agent message is appraised once and is one turn.
    ``min_change`` and ``max_change`` are the range the judge is asked for; ``clip_changes``
    says whether the arithmetic also enforces it. ``floor`` is the lowest score, or ``None``
    for none: RLVER's training code adds the judge's number as it comes, so its score can fall
    below 0 (its reward ``max(final, 0) / 100`` clips there). ``None`` is the default because
    AutoGen drops ``None`` fields when it serialises a component, so it must load back as
    ``None``; with the default clip and F below 10 the score cannot go below 0 anyway.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    initial_score: int = Field(40, ge=0, le=100)
    min_change: int = Field(-10, le=0)
    max_change: int = Field(10, ge=0)
    clip_changes: bool = True
    cap: int = Field(100, ge=1, le=100)
    floor: Annotated[int, Field(ge=0)] | None = None
    band_s: int = 100
    band_a: int = 70
    band_b: int = 40
    band_c: int = 10
    max_turns: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        levels = [self.band_c, self.band_b, self.band_a, self.band_s, self.cap]
        if self.floor is not None:
            levels.insert(0, self.floor)
        if levels != sorted(levels):
            raise ValueError(
                "band thresholds must satisfy floor <= band_c <= band_b <= band_a <= band_s <= cap"
            )
        lowest = 0 if self.floor is None else self.floor
        if not lowest <= self.initial_score <= self.cap:
            raise ValueError("initial_score must lie between floor (or 0) and cap")
        return self

    @classmethod
    def preset(cls, name: str) -> EmotionRules:
        """Look up a named preset (see :data:`PRESETS`)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown emotion rules preset {name!r}; choose one of {sorted(PRESETS)}"
            ) from None


SAGE = EmotionRules(name="sage", initial_score=40, floor=0, max_turns=10)
"""The SAGE benchmark rules: start at 40, each change clipped to [-10, +10], at most 10 turns."""

RLVER_TRAIN = EmotionRules(name="rlver_train", initial_score=30, clip_changes=False, max_turns=9)
"""RLVER's training arithmetic, as its released simulator and rollout compute it: start at 30,
add the judge's change unclipped, cap at 100, no floor, F below 10. Its script sets
``max_turns=8``, but the rollout stops only once the turn count exceeds it, after the user has
answered: a dialogue nobody ends runs 9 appraised agent turns (docs/reproducing-rlver.md)."""

RLVER_TRAIN_CLIPPED = RLVER_TRAIN.model_copy(
    update={"name": "rlver_train_clipped", "clip_changes": True, "floor": 0}
)
"""RLVER's start and turns with SAGE's per-turn clip to [-10, +10]: a bounded variant for
appraisers whose numbers are not on the judge's scale (the offline embedding appraiser)."""

PRESETS: dict[str, EmotionRules] = {
    rules.name: rules for rules in (SAGE, RLVER_TRAIN, RLVER_TRAIN_CLIPPED)
}

PresetName = Literal["sage", "rlver_train", "rlver_train_clipped"]
"""The preset names, for configuration fields that accept a name or inline rules."""

DEFAULT_RULES = SAGE
"""The rules used when none are given: runs, evaluation, ``simulate``, the collector and a
`SimulatedUser`. SAGE, because the Sentient benchmark scores under it, so a default run is
comparable with published numbers. Training configs name ``rlver_train`` explicitly."""


class EmotionStep(BaseModel):
    """One applied appraisal: what the judge asked for and what the rules allowed."""

    model_config = ConfigDict(frozen=True)

    turn: int = Field(ge=1)
    raw_change: int
    applied_change: int
    score_before: int
    score: int
    band: Band


class EmotionState(BaseModel):
    """The user's emotion after zero or more turns, with the full history of steps."""

    model_config = ConfigDict(frozen=True)

    score: int
    band: Band
    turn: int = 0
    steps: tuple[EmotionStep, ...] = ()
    terminal: bool = False
    reason: TerminationReason | None = None


def band_of(score: int, rules: EmotionRules) -> Band:
    """Map a score to its band under ``rules``."""
    if score >= rules.band_s:
        return Band.S
    if score >= rules.band_a:
        return Band.A
    if score >= rules.band_b:
        return Band.B
    if score >= rules.band_c:
        return Band.C
    return Band.F


def clip_change(raw_change: int, rules: EmotionRules) -> int:
    """The change the rules allow: clipped to their range, or as given if they do not clip."""
    if not rules.clip_changes:
        return raw_change
    return max(rules.min_change, min(rules.max_change, raw_change))


def initial_state(rules: EmotionRules) -> EmotionState:
    """The state before the agent has said anything."""
    return EmotionState(score=rules.initial_score, band=band_of(rules.initial_score, rules))


def apply_change(state: EmotionState, raw_change: int, rules: EmotionRules) -> EmotionState:
    """Apply one appraisal. A terminal state is absorbing: it is returned unchanged."""
    if state.terminal:
        return state
    score = min(rules.cap, state.score + clip_change(raw_change, rules))
    if rules.floor is not None:
        score = max(rules.floor, score)
    band = band_of(score, rules)
    turn = state.turn + 1
    step = EmotionStep(
        turn=turn,
        raw_change=raw_change,
        applied_change=score - state.score,
        score_before=state.score,
        score=score,
        band=band,
    )
    reason: TerminationReason | None = None
    if band is Band.S:
        reason = TerminationReason.SUCCESS
    elif band is Band.F:
        reason = TerminationReason.FAILURE
    elif turn >= rules.max_turns:
        reason = TerminationReason.MAX_TURNS
    return EmotionState(
        score=score,
        band=band,
        turn=turn,
        steps=(*state.steps, step),
        terminal=reason is not None,
        reason=reason,
    )


def replay(changes: list[int], rules: EmotionRules) -> EmotionState:
    """Run a sequence of raw changes through the rules from the initial state."""
    state = initial_state(rules)
    for change in changes:
        state = apply_change(state, change, rules)
    return state


class EmotionMetadata(BaseModel):
    """What a simulated user's reply carries in AutoGen ``TextMessage.metadata``.

    AutoGen metadata holds strings only, so this model converts both ways.
    """

    model_config = ConfigDict(frozen=True)

    score: int
    change: int
    band: Band
    turn: int
    terminal: bool
    reason: TerminationReason | None = None

    @classmethod
    def from_state(cls, state: EmotionState) -> EmotionMetadata:
        change = state.steps[-1].applied_change if state.steps else 0
        return cls(
            score=state.score,
            change=change,
            band=state.band,
            turn=state.turn,
            terminal=state.terminal,
            reason=state.reason,
        )

    def to_metadata(self) -> dict[str, str]:
        return {
            "emotion_score": str(self.score),
            "emotion_change": str(self.change),
            "emotion_band": self.band.value,
            "turn": str(self.turn),
            "terminal": "true" if self.terminal else "false",
            "termination_reason": self.reason.value if self.reason else "",
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> EmotionMetadata | None:
        """Parse metadata written by :meth:`to_metadata`; ``None`` if it carries no emotion."""
        if "emotion_score" not in metadata:
            return None
        return cls(
            score=int(metadata["emotion_score"]),
            change=int(metadata["emotion_change"]),
            band=Band(metadata["emotion_band"]),
            turn=int(metadata["turn"]),
            terminal=metadata["terminal"] == "true",
            reason=TerminationReason(metadata["termination_reason"])
            if metadata.get("termination_reason")
            else None,
        )
