"""Episode JSONL files: one whole line per episode, later lines superseding earlier ones.

Lines are appended whole, each ending in a newline, so a killed writer leaves at most one torn
last line. Readers skip it without touching the file; a writer cuts it off with
:func:`repair_jsonl` before appending again.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from rlver_agents.episodes.episode import Episode
from rlver_agents.jsonl import RecordFileError, field_of, iter_json_objects


class TornLineWarning(UserWarning):
    """An episode file ended in a partial line (a run was killed mid-write); it was cut off."""


class EpisodeFileError(RecordFileError):
    """An episode file that cannot be read; the message names the file, line and field."""


def repair_jsonl(path: str | Path) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; returns the bytes removed.

    Whole lines end in a newline because each is written in one piece with its newline, so a
    missing final newline can only mean a write that was interrupted.
    """
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep = _end_of_last_line(handle, size)
        handle.truncate(keep)
    removed = size - keep
    warnings.warn(
        f"{path}: removed a torn last line of {removed} bytes left by an interrupted write",
        TornLineWarning,
        stacklevel=2,
    )
    return removed


def _end_of_last_line(handle: IO[bytes], size: int) -> int:
    """Offset just past the last newline before ``size`` (0 when there is none)."""
    position = size
    while position > 0:
        start = max(0, position - 65536)
        handle.seek(start)
        chunk = handle.read(position - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def iter_episode_lines(path: str | Path) -> Iterator[Episode]:
    """Every whole episode line of ``path`` in file order, superseded ones included.

    A torn last line is skipped (the file is not modified); a broken line elsewhere is an
    :class:`EpisodeFileError`.
    """
    path = Path(path)
    if not path.is_file():
        raise EpisodeFileError(path, None, None, "no such episode file")
    for number, record in iter_json_objects(path, EpisodeFileError, skip_torn_last_line=True):
        try:
            yield Episode.model_validate(record)
        except ValidationError as exc:
            raise EpisodeFileError(path, number, *field_of(exc)) from None


def read_episodes(path: str | Path) -> list[Episode]:
    """The latest episode per (persona, sample), in order of first appearance.

    A resumed or retried campaign appends a new line for an episode it plays again, so a later
    line supersedes an earlier one with the same key.
    """
    latest: dict[tuple[str, int], Episode] = {}
    for episode in iter_episode_lines(path):
        latest[episode.key] = episode
    return list(latest.values())


def write_episodes(path: str | Path, episodes: Iterable[Episode], *, append: bool = False) -> Path:
    """Write episodes as JSONL (one compact JSON object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for episode in episodes:
            handle.write(episode.model_dump_json() + "\n")
    return path
