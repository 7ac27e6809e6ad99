"""Persona schema and loaders for our JSONL/YAML files and the RLVER/SAGE profile format."""

from __future__ import annotations

import re
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from rlver_agents.jsonl import RecordFileError, field_of, iter_json_objects


class Character(StrEnum):
    """How the persona behaves in conversation. Extendable: unknown strings are accepted."""

    NEGATIVE = "negative"
    PASSIVE = "passive"
    AVOIDANT = "avoidant"


class Difficulty(StrEnum):
    """How easily the persona is moved; the appraiser is stricter on harder personas."""

    SIMPLE = "simple"
    NORMAL = "normal"
    HARD = "hard"


RLVER_CHARACTERS: dict[str, str] = {
    "负面型": Character.NEGATIVE,
    "被动型": Character.PASSIVE,
    "回避型": Character.AVOIDANT,
}
"""The RLVER/SAGE ``main_cha`` labels and their English names."""


class Persona(BaseModel):
    """A simulated user: who they are, what troubles them, and what they secretly want."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    name: str = ""
    language: Literal["en", "zh"] = "en"
    profile: str = Field(min_length=1)
    scene: str = Field(min_length=1)
    hidden_need: str = Field(min_length=1)
    character: str = Character.NEGATIVE
    traits: tuple[str, ...] = ()
    difficulty: Difficulty = Difficulty.NORMAL
    topic: str = ""
    first_talk: str | None = None
    triggers: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]] = Field(
        default=[],
        description=(
            "Short lines that make this person shut down (things a supporter might say). "
            "Appraisers treat a message close to one as a misstep even when it is on topic. "
            "Optional: RLVER/SAGE profiles have none, so it stays empty for them."
        ),
    )


class PersonaFileError(RecordFileError):
    """A persona file that cannot be read; the message names the file, line and field."""


_CJK = re.compile(r"[\u4e00-\u9fff]")


def detect_language(text: str) -> Literal["en", "zh"]:
    """Chinese if a noticeable share of the characters are CJK ideographs."""
    if not text:
        return "en"
    return "zh" if len(_CJK.findall(text)) / len(text) > 0.1 else "en"


_NAME_PATTERNS = (
    re.compile(r"姓名\s*[:：]\s*([^\n*]+)"),
    re.compile(r"(?i)name\s*[:：]\s*([^\n*]+)"),
)


def _name_from_profile(profile: str) -> str:
    for pattern in _NAME_PATTERNS:
        match = pattern.search(profile)
        if match:
            return match.group(1).strip()
    return ""


RLVER_TEXT_FIELDS = ("id", "player", "task")
"""Fields of an RLVER/SAGE profile that must hold text: ``null`` would load as "None"."""


def is_rlver_record(record: dict[str, Any]) -> bool:
    """The RLVER/SAGE format is recognised by its ``player`` field (our schema has none)."""
    return "player" in record


def from_rlver_record(record: dict[str, Any]) -> Persona:
    """Convert one RLVER/SAGE profile (``player``, ``scene``, ``main_cha``, ...) to a Persona."""
    profile = str(record["player"])
    scene = str(record.get("scene") or "")
    main_cha = str(record.get("main_cha") or "").strip()
    traits = record.get("cha_group") or []
    if isinstance(traits, str):
        traits = [t for t in re.split(r"[,，、\s]+", traits) if t]
    return Persona(
        id=str(record["id"]),
        name=_name_from_profile(profile),
        language=detect_language(profile + scene),
        profile=profile,
        scene=scene,
        hidden_need=str(record["task"]),
        character=RLVER_CHARACTERS.get(main_cha, main_cha or Character.NEGATIVE),
        traits=tuple(str(t) for t in traits),
        topic=str(record.get("topic") or ""),
        first_talk=record.get("first_talk") or None,
    )


def _parse_record(record: object, path: Path, line: int | None) -> Persona:
    if not isinstance(record, dict):
        raise PersonaFileError(
            path, line, None, f"expected a JSON object, got {type(record).__name__}"
        )
    try:
        if is_rlver_record(record):
            for key in RLVER_TEXT_FIELDS:
                value = record.get(key)
                if key in record and (value is None or not str(value).strip()):
                    got = "null" if value is None else repr(value)
                    raise PersonaFileError(path, line, key, f"must be non-empty text, not {got}")
            return from_rlver_record(record)
        return Persona.model_validate(record)
    except KeyError as exc:
        raise PersonaFileError(path, line, str(exc.args[0]), "missing required field") from None
    except ValidationError as exc:
        raise PersonaFileError(path, line, *field_of(exc)) from None


def _read_jsonl(path: Path) -> list[Persona]:
    return [
        _parse_record(record, path, number)
        for number, record in iter_json_objects(path, PersonaFileError)
    ]


def _read_yaml(path: Path) -> list[Persona]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PersonaFileError(path, line, None, f"invalid YAML: {exc}") from None
    if isinstance(document, dict) and "personas" in document:
        document = document["personas"]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise PersonaFileError(path, None, None, "expected a list of personas")
    # YAML loses line numbers after parsing; report the 1-based entry number instead.
    personas: list[Persona] = []
    for index, record in enumerate(document, start=1):
        try:
            personas.append(_parse_record(record, path, None))
        except PersonaFileError as exc:
            raise PersonaFileError(path, None, exc.field, f"entry {index}: {exc}") from None
    return personas


def load_personas(path: str | Path) -> list[Persona]:
    """Load personas from a ``.jsonl``/``.json`` or ``.yaml``/``.yml`` file.

    Lines in the RLVER/SAGE profile format are converted on the fly, so the public RLVER
    files load as they are. Duplicate ids are an error, since episodes are keyed by them.
    """
    path = Path(path)
    if not path.is_file():
        raise PersonaFileError(path, None, None, "no such file")
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        personas = _read_yaml(path)
    elif suffix in {".jsonl", ".json"}:
        personas = _read_jsonl(path)
    else:
        raise PersonaFileError(path, None, None, "unsupported extension; use .jsonl or .yaml")
    seen: set[str] = set()
    for persona in personas:
        if persona.id in seen:
            raise PersonaFileError(path, None, "id", f"duplicate persona id {persona.id!r}")
        seen.add(persona.id)
    return personas


PERSONA_SPLITS = ("train", "test", "zh")


def bundled_personas_dir() -> Path:
    """The persona files that ship inside the package, ``rlver_agents/data/personas``.

    In a source checkout that folder is a symlink to the top-level ``personas/``, the files'
    one source of truth; a built wheel holds copies. Installed packages are plain directories.
    """
    return Path(str(resources.files("rlver_agents") / "data" / "personas"))


def load_split(split: str) -> list[Persona]:
    """Load a bundled split by name (``train``, ``test`` or ``zh``), or a path to a file."""
    if split in PERSONA_SPLITS:
        path = bundled_personas_dir() / f"{split}.jsonl"
        if not path.is_file():
            found = sorted(p.stem for p in path.parent.glob("*.jsonl"))
            raise PersonaFileError(
                path, None, None, f"bundled split {split!r} is not installed (found: {found})"
            )
        return load_personas(path)
    path = Path(split)
    if not path.exists() and not path.suffix:
        raise PersonaFileError(
            path,
            None,
            None,
            f"no such file, and not a bundled split (choose one of {list(PERSONA_SPLITS)})",
        )
    return load_personas(path)
