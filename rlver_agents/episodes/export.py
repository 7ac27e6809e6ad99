"""Episodes as a Hugging Face dataset or a Parquet file, one row per episode.

The column schema is derived from the :class:`~rlver_agents.episodes.Episode` model itself, so a
field added to an episode, a turn or a generation record is exported without a second list to
keep in step. Free-form dicts (the agent configs, an appraisal) have no fixed shape and are
stored as JSON strings; everything else keeps its type.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.episode_file import read_episodes

if TYPE_CHECKING:
    import datasets


def _required(annotation: Any) -> Any:
    """``X`` for ``X | None``; any other union has no single column type."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"cannot export a field of type {annotation}: not one column type")
        return members[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _feature(annotation: Any) -> Any:
    """The ``datasets`` feature of one field type."""
    from datasets import Value

    annotation = _required(annotation)
    origin = get_origin(annotation)
    if origin in (list, tuple):
        return [_feature(get_args(annotation)[0])]
    if origin is dict:
        return Value("string")
    if origin is Literal:
        kinds = {type(v) for v in get_args(annotation)}
        if kinds == {str}:
            return Value("string")
        if kinds == {int}:
            return Value("int64")
        raise TypeError(f"cannot export a field of type {annotation}: mixed literal types")
    if _is_model(annotation):
        return {name: _feature(f.annotation) for name, f in annotation.model_fields.items()}
    if annotation is bool:
        return Value("bool")
    if annotation is int:
        return Value("int64")
    if annotation is float:
        return Value("float64")
    if annotation is datetime or (
        isinstance(annotation, type) and issubclass(annotation, str | Enum)
    ):
        return Value("string")
    raise TypeError(f"cannot export a field of type {annotation}")


def _convert(annotation: Any, value: Any, dump: bool) -> Any:
    """Turn a JSON-mode value into its column value (``dump``) or back."""
    if value is None:
        return None
    annotation = _required(annotation)
    origin = get_origin(annotation)
    if origin is dict:
        return json.dumps(value, ensure_ascii=False) if dump else json.loads(value)
    if origin in (list, tuple):
        item = get_args(annotation)[0]
        return [_convert(item, v, dump) for v in value]
    if _is_model(annotation):
        return {
            name: _convert(f.annotation, value.get(name), dump)
            for name, f in annotation.model_fields.items()
        }
    return value


def features() -> datasets.Features:
    """The fixed column schema of an episode row."""
    from datasets import Features

    return Features(_feature(Episode))


def episode_to_row(episode: Episode) -> dict[str, Any]:
    """One dataset row of an episode (see :func:`to_dataset`)."""
    return _convert(Episode, episode.model_dump(mode="json"), dump=True)


def episode_from_row(row: dict[str, Any]) -> Episode:
    """The inverse of :func:`episode_to_row`."""
    return Episode.model_validate(_convert(Episode, row, dump=False))


def _episodes(source: str | Path | Iterable[Episode]) -> list[Episode]:
    return read_episodes(source) if isinstance(source, str | Path) else list(source)


def to_dataset(source: str | Path | Iterable[Episode]) -> datasets.Dataset:
    """A Hugging Face dataset, one row per episode (latest line per key when read from a file)."""
    from datasets import Dataset

    rows = [episode_to_row(e) for e in _episodes(source)]
    return Dataset.from_list(rows, features=features())


def from_dataset(dataset: datasets.Dataset) -> list[Episode]:
    """Episodes back from a dataset made by :func:`to_dataset` (or read from its Parquet)."""
    return [episode_from_row(row) for row in dataset]


def export_parquet(source: str | Path | Iterable[Episode], destination: str | Path) -> Path:
    """Write the episodes as Parquet with the :func:`to_dataset` schema."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    to_dataset(source).to_parquet(str(destination))
    return destination


def read_parquet(path: str | Path) -> list[Episode]:
    """Episodes from a Parquet file written by :func:`export_parquet`."""
    import pyarrow.parquet as pq

    return [episode_from_row(row) for row in pq.read_table(str(path)).to_pylist()]
