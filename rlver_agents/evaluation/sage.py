"""Import SAGE result files: score them like the Sentient benchmark and replay their emotions.

A SAGE result file is JSONL, one dialogue per line: ``id``, ``emo_point`` (the final score),
``emo_state``, persona fields, and ``history``, a list of ``{"role", "content"}`` entries. A user
entry that answers an assistant entry carries ``planning.change`` (the judge's raw change) and
``emotion-point`` (the score after it); the opening user line carries at most the starting
``emotion-point``. Numbers are sometimes strings (``"45"``, ``"+5"``).

Replaying the recorded raw changes through :data:`rlver_agents.emotion.SAGE` checks that the
recorded trajectory obeys the rules; any difference is reported with its turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.emotion import (
    SAGE,
    Band,
    EmotionRules,
    TerminationReason,
    apply_change,
    band_of,
    initial_state,
)
from rlver_agents.episodes.episode import Episode, EpisodeConfig, Turn
from rlver_agents.evaluation.benchmark import BenchmarkReport, sentient_benchmark
from rlver_agents.jsonl import RecordFileError, iter_json_objects

_DIALOGUE_KEYS = {"id", "emo_point", "emo_state", "history"}
SCORE_MIN, SCORE_MAX = SAGE.floor, SAGE.cap


class SageFileError(RecordFileError):
    """A SAGE result file that cannot be read; the message names the file, line and field."""


class SageMessage(BaseModel):
    """One history entry. ``change`` and ``point`` are set on user entries that appraise."""

    model_config = ConfigDict(frozen=True)

    role: str
    content: str
    change: int | None = None
    point: int | None = None


class SageDialogue(BaseModel):
    """One parsed line of a SAGE result file."""

    model_config = ConfigDict(frozen=True)

    id: str
    line: int
    final_score: int
    emo_state: str = ""
    opening_point: int | None = None
    messages: list[SageMessage]
    persona: dict[str, Any] = Field(default_factory=dict)

    @property
    def changes(self) -> list[int]:
        """The judge's raw change for each appraised user turn, in order."""
        return [m.change for m in self.messages if m.change is not None]

    @property
    def points(self) -> list[int]:
        """The recorded score after each appraised user turn, in order."""
        return [m.point for m in self.messages if m.change is not None and m.point is not None]

    @property
    def num_turns(self) -> int:
        """Assistant messages, which is how turns are counted everywhere else."""
        return sum(1 for m in self.messages if m.role == "assistant")


class TurnMismatch(BaseModel):
    """A recorded value that the rules do not reproduce.

    ``turn`` 0 is the opening score; turn ``k`` is the score after the ``k``-th appraisal;
    ``field`` is ``emotion-point`` for a turn and ``emo_point`` for the dialogue's final score.
    """

    model_config = ConfigDict(frozen=True)

    turn: int
    field: str
    expected: int
    recorded: int


class DialogueMismatch(BaseModel):
    """Every mismatch of one dialogue, first one first."""

    model_config = ConfigDict(frozen=True)

    dialogue_id: str
    line: int
    turns: list[TurnMismatch]

    @property
    def first_turn(self) -> int:
        return self.turns[0].turn

    def describe(self) -> str:
        """One line for people: where the dialogue is and each value that differs."""
        details = "; ".join(
            f"turn {m.turn} {m.field} expected {m.expected}, recorded {m.recorded}"
            for m in self.turns
        )
        return f"line {self.line}, dialogue {self.dialogue_id!r}: {details}"


class SageFileScore(BaseModel):
    """Summary of one SAGE file. Its JSON dump holds only the headline numbers.

    ``replay_mismatches`` counts dialogues whose trajectory differs from the replay; the
    per-turn details are in ``mismatches``, which is left out of the dump.
    """

    file: str
    n: int
    mean: float | None
    success: int
    failure: int
    replay_mismatches: int
    mismatches: list[DialogueMismatch] = Field(default_factory=list, exclude=True)


def _as_int(value: Any, path: Path, line: int, field: str) -> int:
    """Accept ints, integral floats and strings such as ``"45"``, ``" +5 "`` or ``"-3.0"``."""
    if isinstance(value, bool):
        raise SageFileError(path, line, field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
    raise SageFileError(path, line, field, f"expected an integer, got {value!r}")


def _as_score(value: Any, path: Path, line: int, field: str) -> int:
    """An emotion score: an integer within SAGE's 0..100."""
    score = _as_int(value, path, line, field)
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise SageFileError(
            path, line, field, f"emotion scores run from {SCORE_MIN} to {SCORE_MAX}, got {score}"
        )
    return score


def _parse_message(entry: Any, index: int, appraises: bool, path: Path, line: int) -> SageMessage:
    where = f"history[{index}]"
    if not isinstance(entry, dict):
        raise SageFileError(path, line, where, f"expected an object, got {type(entry).__name__}")
    role = entry.get("role")
    if role not in ("user", "assistant"):
        raise SageFileError(
            path, line, f"{where}.role", f"expected 'user' or 'assistant', got {role!r}"
        )
    content = entry.get("content")
    if not isinstance(content, str):
        raise SageFileError(path, line, f"{where}.content", "missing or not a string")
    if role == "assistant":
        return SageMessage(role=role, content=content)
    if not appraises:
        point = entry.get("emotion-point")
        opening = None if point is None else _as_score(point, path, line, f"{where}.emotion-point")
        return SageMessage(role=role, content=content, point=opening)
    planning = entry.get("planning")
    if not isinstance(planning, dict):
        raise SageFileError(path, line, f"{where}.planning", "missing or not an object")
    if "change" not in planning:
        raise SageFileError(path, line, f"{where}.planning.change", "missing")
    if "emotion-point" not in entry:
        raise SageFileError(path, line, f"{where}.emotion-point", "missing")
    return SageMessage(
        role=role,
        content=content,
        change=_as_int(planning["change"], path, line, f"{where}.planning.change"),
        point=_as_score(entry["emotion-point"], path, line, f"{where}.emotion-point"),
    )


def parse_sage_record(record: dict[str, Any], path: Path, line: int) -> SageDialogue:
    """Validate one decoded line. A user entry appraises when an assistant entry came before it."""
    for key in ("id", "emo_point", "history"):
        if key not in record:
            raise SageFileError(path, line, key, "missing")
    history = record["history"]
    if not isinstance(history, list):
        raise SageFileError(path, line, "history", "expected a list")
    messages: list[SageMessage] = []
    seen_assistant = False
    for index, entry in enumerate(history):
        message = _parse_message(entry, index, seen_assistant, path, line)
        seen_assistant = seen_assistant or message.role == "assistant"
        messages.append(message)
    opening = messages[0].point if messages and messages[0].role == "user" else None
    return SageDialogue(
        id=str(record["id"]),
        line=line,
        final_score=_as_score(record["emo_point"], path, line, "emo_point"),
        emo_state=str(record.get("emo_state") or ""),
        opening_point=opening,
        messages=messages,
        persona={k: v for k, v in record.items() if k not in _DIALOGUE_KEYS},
    )


def read_sage_file(path: str | Path) -> list[SageDialogue]:
    """Every dialogue of a SAGE result file; blank lines are skipped, an empty file is an error."""
    path = Path(path)
    dialogues = [
        parse_sage_record(record, path, number)
        for number, record in iter_json_objects(path, SageFileError)
    ]
    if not dialogues:
        raise SageFileError(path, None, None, "holds no dialogues")
    return dialogues


def replay_dialogue(dialogue: SageDialogue, rules: EmotionRules = SAGE) -> DialogueMismatch | None:
    """Replay the recorded raw changes; ``None`` when every recorded score matches."""
    mismatches: list[TurnMismatch] = []
    state = initial_state(rules)
    if dialogue.opening_point is not None and dialogue.opening_point != state.score:
        mismatches.append(
            TurnMismatch(
                turn=0, field="emotion-point", expected=state.score, recorded=dialogue.opening_point
            )
        )
    for turn, (change, point) in enumerate(zip(dialogue.changes, dialogue.points, strict=True), 1):
        state = apply_change(state, change, rules)
        if point != state.score:
            mismatches.append(
                TurnMismatch(turn=turn, field="emotion-point", expected=state.score, recorded=point)
            )
    if dialogue.final_score != state.score:
        mismatches.append(
            TurnMismatch(
                turn=len(dialogue.changes),
                field="emo_point",
                expected=state.score,
                recorded=dialogue.final_score,
            )
        )
    if not mismatches:
        return None
    return DialogueMismatch(dialogue_id=dialogue.id, line=dialogue.line, turns=mismatches)


def dialogue_to_episode(
    dialogue: SageDialogue, rules: EmotionRules = SAGE, source: str = ""
) -> Episode:
    """Express a SAGE dialogue as an Episode so benchmark and report code apply unchanged.

    Emotions are the recorded ones (not the replay), so the episode shows what the file says.
    """
    turns: list[Turn] = []
    score = dialogue.opening_point if dialogue.opening_point is not None else rules.initial_score
    for index, message in enumerate(dialogue.messages):
        if message.role == "assistant":
            turns.append(
                Turn(index=index, speaker="agent", source="assistant", text=message.content)
            )
            continue
        if message.change is None or message.point is None:
            turns.append(Turn(index=index, speaker="user", source="user", text=message.content))
            continue
        turns.append(
            Turn(
                index=index,
                speaker="user",
                source="user",
                text=message.content,
                raw_change=message.change,
                applied_change=message.point - score,
                emotion_before=score,
                emotion_after=message.point,
                band=band_of(message.point, rules),
            )
        )
        score = message.point
    final_band = band_of(dialogue.final_score, rules)
    if final_band is Band.S:
        termination = TerminationReason.SUCCESS
    elif final_band is Band.F:
        termination = TerminationReason.FAILURE
    else:
        termination = TerminationReason.MAX_TURNS
    return Episode(
        persona_id=dialogue.id,
        config=EpisodeConfig(
            simulator={
                "kind": "sage_import",
                "file": source,
                "line": dialogue.line,
                "emo_state": dialogue.emo_state,
                "persona": dialogue.persona,
            },
            rules=rules.model_dump(mode="json"),
        ),
        turns=turns,
        termination=termination,
        final_score=dialogue.final_score,
        num_turns=dialogue.num_turns,
    )


def sage_episodes(path: str | Path, rules: EmotionRules = SAGE) -> list[Episode]:
    """Read a SAGE result file as Episodes (for ``write_report`` and ``sentient_benchmark``)."""
    return [dialogue_to_episode(d, rules, str(path)) for d in read_sage_file(path)]


def sage_benchmark(path: str | Path, rules: EmotionRules = SAGE) -> BenchmarkReport:
    """The full Sentient benchmark report (with the per-dialogue table) of a SAGE file."""
    return sentient_benchmark(sage_episodes(path, rules), rules)


def score_sage_file(path: str | Path, rules: EmotionRules = SAGE) -> SageFileScore:
    """Headline statistics of a SAGE file plus the dialogues that the replay contradicts."""
    dialogues = read_sage_file(path)
    report = sentient_benchmark(
        (dialogue_to_episode(d, rules, str(path)) for d in dialogues), rules
    )
    mismatches = [m for m in (replay_dialogue(d, rules) for d in dialogues) if m is not None]
    return SageFileScore(
        file=str(path),
        n=report.n_scored,
        mean=report.mean_final_score,
        success=report.success,
        failure=report.failure,
        replay_mismatches=len(mismatches),
        mismatches=mismatches,
    )
