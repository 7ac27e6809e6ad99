"""Prompt templates of the simulated user, kept as package files under ``prompts/{en,zh}/``.

Templates use simple ``{name}`` placeholders (lowercase identifiers only, so literal braces
such as JSON examples pass through untouched). A template may be split into ``## key``
sections, for texts chosen by a value such as the band or the persona's difficulty.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Literal

from rlver_agents.personas import Persona

Language = Literal["en", "zh"]

LANGUAGES: tuple[Language, ...] = ("en", "zh")

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_SECTION = re.compile(r"^## +(\S+) *$", re.MULTILINE)


class PromptError(KeyError):
    """A template that is missing, lacks a section, or needs a variable nobody supplied."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _template_path(name: str, language: str) -> str:
    return f"rlver_agents/prompts/{language}/{name}.md"


@cache
def load_template(name: str, language: Language = "en") -> str:
    """The raw text of ``prompts/<language>/<name>.md``."""
    if language not in LANGUAGES:
        raise PromptError(f"unknown prompt language {language!r}; choose one of {LANGUAGES}")
    resource = resources.files("rlver_agents").joinpath("prompts", language, f"{name}.md")
    if not resource.is_file():
        raise PromptError(f"no prompt template {_template_path(name, language)}")
    return resource.read_text(encoding="utf-8").strip()


def fill(template: str, variables: dict[str, object], *, source: str = "<template>") -> str:
    """Replace every ``{name}`` in ``template``; a placeholder without a value is an error."""
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in variables})
    if missing:
        raise PromptError(f"{source} needs variable(s) {', '.join(missing)} that were not given")
    return _PLACEHOLDER.sub(lambda match: str(variables[match.group(1)]), template)


def render(name: str, language: Language = "en", /, **variables: object) -> str:
    """Load ``prompts/<language>/<name>.md`` and fill its placeholders."""
    return fill(load_template(name, language), variables, source=_template_path(name, language))


@cache
def load_sections(name: str, language: Language = "en") -> dict[str, str]:
    """Split a template into its ``## key`` sections (text before the first heading is dropped)."""
    text = load_template(name, language)
    headings = list(_SECTION.finditer(text))
    if not headings:
        raise PromptError(f"{_template_path(name, language)} has no '## key' sections")
    sections: dict[str, str] = {}
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        sections[heading.group(1)] = text[heading.end() : end].strip()
    return sections


def section(name: str, key: str, language: Language = "en", /, **variables: object) -> str:
    """One ``## key`` section of a template, with its placeholders filled."""
    sections = load_sections(name, language)
    if key not in sections:
        raise PromptError(
            f"{_template_path(name, language)} has no section {key!r}; it has {sorted(sections)}"
        )
    return fill(sections[key], variables, source=f"{_template_path(name, language)}#{key}")


_LANGUAGE_NAMES: dict[str, str] = {"en": "English", "zh": "中文"}
_DEFAULT_NAMES: dict[str, str] = {"en": "the person", "zh": "这个人"}


def persona_variables(persona: Persona) -> dict[str, object]:
    """The placeholders every persona-facing template shares."""
    language = persona.language
    characters = load_sections("character", language)
    character_note = characters.get(str(persona.character), characters["default"])
    return {
        "name": persona.name or _DEFAULT_NAMES[language],
        "profile": persona.profile,
        "scene": persona.scene,
        "hidden_need": persona.hidden_need,
        "character_note": character_note,
        "traits": ", ".join(persona.traits) if persona.traits else "-",
        "language_name": _LANGUAGE_NAMES[language],
        "triggers": triggers_line(persona),
    }


_TRIGGER_LINES: dict[str, tuple[str, str, str]] = {
    "en": (
        "\nThey are sensitive to lines like these and shut down at them, even reworded: ",
        '"{}"',
        "; ",
    ),
    "zh": ("\n他对这类话很敏感，听到了（哪怕换个说法）就会关上心门：", "“{}”", "；"),
}
"""Per language: the line's label, how one trigger is quoted, and the separator."""


def triggers_line(persona: Persona) -> str:
    """A line listing the persona's triggers, starting with a newline; empty without triggers,
    so a template that puts ``{triggers}`` right after a line is unchanged for such personas."""
    if not persona.triggers:
        return ""
    label, quote, separator = _TRIGGER_LINES[persona.language]
    return label + separator.join(quote.format(t) for t in persona.triggers)
