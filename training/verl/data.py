"""Persona files to the parquet that verl's ``RLHFDataset`` reads: one row per persona.

Each row names the agent loop that plays it (``agent_name``) and carries the whole persona as
JSON (``persona``), so a rollout worker needs nothing but the row. ``prompt`` holds the agent's
system message: verl keeps it as the row's ``raw_prompt``, while the dialogue's real prompt is
built by the loop once the user has spoken. Our persona files and the RLVER/SAGE profile
format are both read, through the same loader as ``rlver``. With ``--interaction NAME`` the
rows are for verl's tool loop with our simulated user (:mod:`training.verl.interaction`):
``extra_info.interaction_kwargs`` names the interaction and carries the persona.

    python -m training.verl.data train --out data/verl/train.parquet
    python -m training.verl.data ../shared/data/rlver/train_profile.jsonl --out rlver.parquet
    python -m training.verl.data train --interaction rlver_user --out data/verl/users.parquet
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from pydantic import BaseModel, ConfigDict
from rich.console import Console

from rlver_agents.agents.agent import default_system_message
from rlver_agents.jsonl import RecordFileError
from rlver_agents.personas import Persona, load_split
from training.verl.settings import AGENT_NAME, USER_TOOL_AGENT_NAME

DATA_SOURCE = "rlver"
"""``data_source`` of every row (verl's default reward key; the loop scores dialogues itself)."""


class RewardSpec(BaseModel):
    """verl's ``reward_model`` column, which its reward managers read even when a custom
    reward function (training/verl/reward.py) ignores it."""

    model_config = ConfigDict(frozen=True)

    style: str = "rule"
    ground_truth: str = ""


class InteractionKwargs(BaseModel):
    """What verl hands an interaction: its name and, for ours, the persona as JSON."""

    model_config = ConfigDict(frozen=True)

    name: str
    persona: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: str
    content: str


class RowInfo(BaseModel):
    """verl's ``extra_info``: ``index`` is the row number verl groups and traces by."""

    model_config = ConfigDict(frozen=True)

    index: int
    persona_id: str
    split: str
    interaction_kwargs: InteractionKwargs | None = None


class DatasetRow(BaseModel):
    """One parquet row; the columns verl's dataset and the dialogue loop read."""

    model_config = ConfigDict(frozen=True)

    data_source: str = DATA_SOURCE
    agent_name: str = AGENT_NAME
    prompt: list[ChatMessage]
    persona: str
    persona_id: str
    language: str
    extra_info: RowInfo
    reward_model: RewardSpec = RewardSpec()


SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("agent_name", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("persona", pa.string()),
        ("persona_id", pa.string()),
        ("language", pa.string()),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("persona_id", pa.string()),
                    ("split", pa.string()),
                    (
                        "interaction_kwargs",
                        pa.struct([("name", pa.string()), ("persona", pa.string())]),
                    ),
                ]
            ),
        ),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ]
)


def persona_rows(
    personas: Sequence[Persona],
    *,
    split: str,
    agent_name: str | None = None,
    interaction: str | None = None,
    think: bool = False,
    start: int = 0,
) -> list[DatasetRow]:
    """One row per persona, numbered from ``start``; duplicate ids are an error.

    ``interaction`` names the interaction that plays the user; the rows' agent loop is then
    ``rlver_user_tool_agent`` unless ``agent_name`` says otherwise (else ``rlver_dialogue``).
    """
    loop = agent_name or (USER_TOOL_AGENT_NAME if interaction else AGENT_NAME)
    seen: set[str] = set()
    rows: list[DatasetRow] = []
    for offset, persona in enumerate(personas):
        if persona.id in seen:
            raise ValueError(f"persona id {persona.id!r} appears twice; rows are keyed by it")
        seen.add(persona.id)
        call = (
            InteractionKwargs(name=interaction, persona=persona.model_dump_json())
            if interaction
            else None
        )
        rows.append(
            DatasetRow(
                agent_name=loop,
                prompt=[
                    ChatMessage(
                        role="system",
                        content=default_system_message(persona.language, think=think),
                    )
                ],
                persona=persona.model_dump_json(),
                persona_id=persona.id,
                language=persona.language,
                extra_info=RowInfo(
                    index=start + offset,
                    persona_id=persona.id,
                    split=split,
                    interaction_kwargs=call,
                ),
            )
        )
    return rows


def write_parquet(rows: Sequence[DatasetRow], path: Path) -> Path:
    """Write ``rows`` with the fixed :data:`SCHEMA`; parent folders are created."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([row.model_dump() for row in rows], schema=SCHEMA)
    pq.write_table(table, path)
    return path


def read_rows(path: Path) -> list[DatasetRow]:
    """Read a converted file back, validating every row."""
    return [DatasetRow.model_validate(row) for row in pq.read_table(path).to_pylist()]


def convert(
    sources: Sequence[str],
    out: Path,
    *,
    split: str | None = None,
    agent_name: str | None = None,
    interaction: str | None = None,
    think: bool = False,
    limit: int | None = None,
) -> list[DatasetRow]:
    """Load every source (a bundled split name or a file), convert and write ``out``."""
    personas: list[Persona] = []
    for source in sources:
        personas.extend(load_split(source))
    if limit is not None:
        personas = personas[:limit]
    name = split or (sources[0] if len(sources) == 1 else "mixed")
    rows = persona_rows(
        personas,
        split=Path(name).stem,
        agent_name=agent_name,
        interaction=interaction,
        think=think,
    )
    write_parquet(rows, out)
    return rows


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    sources: Annotated[
        list[str], typer.Argument(help="Bundled splits (train, test, zh) or persona files.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write.")],
    split: Annotated[str | None, typer.Option(help="Split name in extra_info.")] = None,
    agent_name: Annotated[
        str | None,
        typer.Option(help="Agent loop that plays the rows (default: see --interaction)."),
    ] = None,
    interaction: Annotated[
        str | None,
        typer.Option(
            help="Rows for verl's tool loop with this interaction as the user "
            f"({USER_TOOL_AGENT_NAME}); without it, rows for {AGENT_NAME}."
        ),
    ] = None,
    think: Annotated[bool, typer.Option(help="Use the think-then-say system prompt.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Keep the first N personas.")] = None,
) -> None:
    """Convert persona files to a verl dataset parquet."""
    try:
        rows = convert(
            sources,
            out,
            split=split,
            agent_name=agent_name,
            interaction=interaction,
            think=think,
            limit=limit,
        )
    except (RecordFileError, ValueError, OSError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    languages = sorted({row.language for row in rows})
    Console(soft_wrap=True).print(
        f"wrote {len(rows)} rows ({', '.join(languages)}) to {out}", highlight=False
    )


if __name__ == "__main__":
    app()
