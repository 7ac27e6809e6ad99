"""The ``rlver`` command line: simulate, collect, eval, score-sage, report and chat.

With no ``--config`` every command runs offline: the embedded SmolLM2 plays the agent and
writes the simulated user's replies, and the learned judge scores the agent.

Errors are single ``error:`` lines on stderr, never tracebacks. Exit code 2: the run could not
start (a bad option, file, configuration or persona source, a server that fails the checks
before a run). Exit code 1: it ran, but every episode or dialogue errored, or a chat's model
call failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import typer
from autogen_agentchat.base import ChatAgent
from autogen_agentchat.messages import TextMessage, ThoughtEvent
from autogen_core import CancellationToken
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from rlver_agents.appraisers.appraisal import BaseAppraiser
from rlver_agents.config import ConfigError, RunConfig, load_config
from rlver_agents.emotion import Band, EmotionMetadata, EmotionRules
from rlver_agents.episodes.collector import CampaignSummary
from rlver_agents.personas import Persona, PersonaFileError, load_split
from rlver_agents.preflight import PreflightError, check_run

app = typer.Typer(
    help="RLVER for AutoGen: simulate dialogues with emotion-scored users, collect, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _quiet_model_loading() -> None:
    """Model-loading progress bars would interleave with the live dialogue output.

    A team's runtime also logs a failing agent's traceback; the CLI reports the failure itself
    on one line, so those records get a handler that drops them instead of Python's fallback
    handler, which prints them.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("autogen_core").addHandler(logging.NullHandler())


console = Console(highlight=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

BAND_STYLE = {
    Band.S: "bold green",
    Band.A: "green",
    Band.B: "yellow",
    Band.C: "red",
    Band.F: "bold red",
}

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML or TOML run configuration.")
]
PersonasOption = Annotated[
    str | None,
    typer.Option(
        "--personas", "-p", help="Split (train, test, zh) or persona file; overrides the config."
    ),
]
SeedOption = Annotated[int | None, typer.Option(help="Overrides the config's seed.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: ...`` (one line per line of ``message``); raise the returned exit."""
    for line in message.splitlines() or [""]:
        errors.print(f"[bold red]error:[/] {escape(line.strip())}")
    return typer.Exit(code=code)


def _one_line(text: str, limit: int = 400) -> str:
    """An error reason on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _at_least_one(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise _fail(f"{option} must be at least 1, got {value}")


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise _fail(f"--out {out} is a directory; give the path of a .jsonl file")


def _announce_first_use(run: RunConfig) -> None:
    """Converting the embedded model takes a while once; say so instead of seeming stuck."""
    from rlver_agents.models.embedded import cache_dir, cached_embedded_path

    kinds = {run.agent.model.kind, run.simulator.model.kind}
    if "embedded" in kinds and cached_embedded_path() is None:
        console.print(
            f"[dim]First run: converting the embedded SmolLM2-135M into {cache_dir()} "
            "(once, about 20 s)...[/]"
        )


def _load(
    config: Path | None, personas: str | None, seed: int | None
) -> tuple[RunConfig, list[Persona]]:
    try:
        run = load_config(config)
        if seed is not None:
            run = run.model_copy(update={"seed": seed})
        if personas is not None:
            run = run.model_copy(update={"personas": personas})
        chosen = load_split(run.personas)
        check_run(run, chosen, config_file=config)
    except (ConfigError, PersonaFileError, PreflightError) as exc:
        raise _fail(str(exc)) from None
    _announce_first_use(run)
    return run, chosen


def _emotion_tag(meta: EmotionMetadata) -> str:
    style = BAND_STYLE[meta.band]
    change = f" {meta.change:+d}" if meta.turn else ""
    return f"[{style}]{meta.score:>3} {meta.band.value}{change}[/]"


@app.command()
def simulate(
    config: ConfigOption = None,
    personas: PersonasOption = None,
    n: Annotated[int, typer.Option("--n", "-n", help="How many dialogues to play.")] = 2,
    seed: SeedOption = None,
) -> None:
    """Play a few dialogues and print them live, with the user's emotion after each turn."""
    _at_least_one("--n", n)
    run, persona_list = _load(config, personas, seed)
    chosen = random.Random(run.seed).sample(persona_list, min(n, len(persona_list)))
    failed = asyncio.run(_simulate(run, chosen))
    if failed == len(chosen):
        raise _fail(f"all {failed} dialogue(s) failed", code=1)


async def _simulate(run: RunConfig, personas: list[Persona]) -> int:
    """Play and print each dialogue; returns how many failed (each is reported, not raised)."""
    from rlver_agents.builders import ClientPool, agent_factory, user_factory
    from rlver_agents.episodes.episode import EpisodeContext
    from rlver_agents.errors import describe_error

    rules = run.emotion_rules()
    finals: list[int] = []
    origins: Counter[str] = Counter()
    failed = 0
    pool = ClientPool()
    for index, persona in enumerate(personas):
        context = EpisodeContext(persona=persona, sample=0, rules=rules, seed=run.seed + index)
        console.rule(
            f"[bold]{persona.name or persona.id}[/] ({persona.id}, {persona.character}, "
            f"{persona.difficulty}, {persona.topic})"
        )
        console.print(f"[dim]hidden need: {persona.hidden_need}[/]")
        try:
            user = user_factory(run, pool)(context)
            agent = agent_factory(run, pool)(context)
            finals.append(await _play_live(user, agent, rules, origins))
        except Exception as exc:  # a failed dialogue is reported like an errored episode
            failed += 1
            # a team reports an agent's error as text with its traceback appended
            reason = _one_line(describe_error(exc).split("Traceback:", 1)[0])
            errors.print(f"[bold red]dialogue failed:[/] {escape(reason)}")
    await pool.close()
    console.rule()
    mean = f"{sum(finals) / len(finals):.1f}" if finals else "-"
    console.print(
        f"{len(finals)} dialogues, mean final emotion {mean}; of {origins.total()} user "
        f"replies {origins['stock']} were stock lines and {origins['trimmed']} were trimmed"
        + (f"; {failed} failed" if failed else "")
    )
    return failed


async def _play_live(
    user: ChatAgent, agent: ChatAgent, rules: EmotionRules, origins: Counter[str]
) -> int:
    """One dialogue as a team, printed as it happens; returns the final emotion."""
    from rlver_agents.agents.simulator import dialogue_team
    from rlver_agents.appraisers.appraisal import AppraisalEvent

    team = dialogue_team(user, agent, max_messages=2 * rules.max_turns + 2)  # type: ignore[arg-type]
    result = None
    async for event in team.run_stream():
        if isinstance(event, TextMessage):
            meta = EmotionMetadata.from_metadata(event.metadata)
            if meta is not None:
                origin = event.metadata.get("reply_origin", "")
                origins[origin] += 1
                tag = f" [dim]({origin})[/]" if origin in {"stock", "trimmed"} else ""
                console.print(f"{_emotion_tag(meta)}  [bold cyan]user[/]  {event.content}{tag}")
            else:
                console.print(f"       [bold magenta]agent[/] {event.content}")
        elif isinstance(event, AppraisalEvent):
            console.print(f"       [dim]appraisal: {event.appraisal.reaction}[/]")
        elif isinstance(event, ThoughtEvent):
            console.print(f"       [dim italic]thought: {event.content}[/]")
        else:
            result = event
    state = user.state  # type: ignore[attr-defined]
    stop = getattr(result, "stop_reason", None)
    console.print(
        f"[bold]final emotion {state.score} ({state.band.value}), {state.turn} turns[/]"
        f" [dim]{stop or ''}[/]"
    )
    return int(state.score)


async def _campaign(
    run: RunConfig, output: Path, personas: list[Persona], progress: bool
) -> CampaignSummary:
    """Play the run's campaign into ``output`` (resuming it), then close shared clients."""
    from rlver_agents.builders import (
        ClientPool,
        agent_factory,
        engine_rounds,
        episode_config,
        retry_policy,
        user_factory,
    )
    from rlver_agents.episodes.collector import CollectorConfig, TrajectoryCollector

    collector_config = CollectorConfig(
        output=output,
        samples_per_persona=run.episodes_per_persona,
        concurrency=run.concurrency,
        rules=run.emotion_rules(),
        seed=run.seed,
        retry=retry_policy(run.timeouts),
        progress=progress,
    )
    pool = ClientPool()
    collector = TrajectoryCollector(
        collector_config,
        user_factory=user_factory(run, pool),
        agent_factory=agent_factory(run, pool),
        episode_config=episode_config(run),
        rounds=engine_rounds(run),
    )
    try:
        return await collector.run(personas)
    finally:
        await pool.close()


def _run_campaign(
    run: RunConfig, output: Path, personas: list[Persona], progress: bool
) -> CampaignSummary:
    """:func:`_campaign`, with a run file that cannot be resumed reported as an error line."""
    from rlver_agents.episodes.collector import CampaignFileError
    from rlver_agents.jsonl import RecordFileError

    try:
        return asyncio.run(_campaign(run, output, personas, progress))
    except (CampaignFileError, RecordFileError, OSError) as exc:
        raise _fail(str(exc)) from None


def _fail_if_all_errored(summary: CampaignSummary, keys: set[tuple[str, int]]) -> None:
    """Exit 1 when no planned episode has a score, naming the most common reason."""
    from rlver_agents.episodes.episode_file import read_episodes
    from rlver_agents.evaluation.benchmark import common_errors

    if summary.planned == 0 or summary.errors < summary.planned:
        return
    [common] = common_errors(e for e in read_episodes(summary.output) if e.key in keys)[:1]
    raise _fail(
        f"all {summary.planned} episodes errored; {common.count} of them with: "
        f"{_one_line(common.reason)}",
        code=1,
    )


def _planned_keys(run: RunConfig, personas: list[Persona]) -> set[tuple[str, int]]:
    return {(p.id, s) for p in personas for s in range(run.episodes_per_persona)}


@app.command()
def collect(
    out: Annotated[Path, typer.Option("--out", "-o", help="Episode JSONL; resumed if it exists.")],
    config: ConfigOption = None,
    personas: PersonasOption = None,
    n: Annotated[int | None, typer.Option("--n", "-n", help="Episodes per persona.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Episodes in flight.")] = None,
    seed: SeedOption = None,
    parquet: Annotated[Path | None, typer.Option(help="Also export to this Parquet file.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a campaign into a resumable JSONL file (n episodes per persona)."""
    _at_least_one("--n", n)
    _at_least_one("--concurrency", concurrency)
    _check_out(out)
    run, persona_list = _load(config, personas, seed)
    updates = {"episodes_per_persona": n, "concurrency": concurrency}
    run = run.model_copy(update={k: v for k, v in updates.items() if v is not None})
    summary = _run_campaign(run, out, persona_list, progress)
    console.print_json(summary.model_dump_json())
    _fail_if_all_errored(summary, _planned_keys(run, persona_list))
    if parquet is not None:
        from rlver_agents.episodes.export import export_parquet

        export_parquet(out, parquet)
        console.print(f"wrote {parquet}")


@app.command("eval")
def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Episode JSONL; resumed if it exists.")],
    config: ConfigOption = None,
    personas: PersonasOption = None,
    seed: SeedOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """The Sentient benchmark: play every persona of the split and report the scores."""
    from rlver_agents.episodes.episode_file import read_episodes
    from rlver_agents.evaluation.benchmark import sentient_benchmark

    _check_out(out)
    run, persona_list = _load(config, personas, seed)
    summary = _run_campaign(run, out, persona_list, progress and not as_json)
    planned = _planned_keys(run, persona_list)
    episodes = [e for e in read_episodes(out) if e.key in planned]
    report = sentient_benchmark(episodes, run.emotion_rules())
    if as_json:
        typer.echo(report.model_dump_json())
    else:
        console.print(Markdown(report.to_markdown()))
    _fail_if_all_errored(summary, planned)


@app.command("score-sage")
def score_sage(
    files: Annotated[list[Path], typer.Argument(help="SAGE result JSONL files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Score SAGE result files and replay their recorded changes through the sage rules."""
    from rlver_agents.evaluation.sage import SageFileError, score_sage_file

    for path in files:
        try:
            score = score_sage_file(path)
        except (SageFileError, OSError) as exc:
            raise _fail(str(exc)) from None
        if as_json:
            typer.echo(score.model_dump_json())
            continue
        table = Table(title=str(path))
        for column in ("n", "mean", "success", "failure", "replay mismatches"):
            table.add_column(column, justify="right")
        table.add_row(
            str(score.n),
            f"{score.mean:.2f}",
            str(score.success),
            str(score.failure),
            str(score.replay_mismatches),
        )
        console.print(table)
        for mismatch in score.mismatches:
            console.print(f"  [red]mismatch[/] {mismatch.describe()}")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Episode JSONL files, one per run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md and plots.")],
) -> None:
    """Write a Markdown report with emotion trajectories, score distributions and comparisons."""
    from rlver_agents.evaluation.report import write_report

    try:
        path = write_report(runs, out)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"wrote {path}")


@app.command()
def chat(
    role: Annotated[
        Literal["agent", "user"],
        typer.Option(help="agent: you comfort a simulated user; user: you talk to the agent."),
    ] = "agent",
    persona: Annotated[str | None, typer.Option(help="Persona id (default: random).")] = None,
    config: ConfigOption = None,
    personas: PersonasOption = None,
    seed: SeedOption = None,
) -> None:
    """Talk in the terminal, with the simulated user's emotion shown after every turn.

    As ``agent`` you answer a simulated user. As ``user`` you play the persona shown to you
    and the appraiser tracks how the agent's replies would move that persona. Type /quit to stop.
    """
    run, persona_list = _load(config, personas, seed)
    if persona is None:
        chosen = random.Random(run.seed).choice(persona_list)
    else:
        matches = [p for p in persona_list if p.id == persona]
        if not matches:
            raise _fail(f"no persona with id {persona!r} in {run.personas}")
        chosen = matches[0]
    from rlver_agents.errors import describe_error

    runner = _chat_as_agent if role == "agent" else _chat_as_user
    try:
        asyncio.run(runner(run, chosen))
    except Exception as exc:  # a failed model call ends the chat with its reason
        raise _fail(f"the chat stopped: {_one_line(describe_error(exc))}", code=1) from None


def _ask() -> str | None:
    try:
        text = typer.prompt("you", prompt_suffix="> ").strip()
    except (EOFError, typer.Abort):
        return None
    return None if text in {"/quit", "/exit"} else text


async def _chat_as_agent(run: RunConfig, persona: Persona) -> None:
    from rlver_agents.builders import ClientPool, user_factory
    from rlver_agents.episodes.episode import EpisodeContext

    context = EpisodeContext(persona=persona, rules=run.emotion_rules(), seed=run.seed)
    pool = ClientPool()
    user = user_factory(run, pool)(context)
    try:
        await _converse_with_user(user, persona)
    finally:
        await pool.close()


async def _converse_with_user(user: ChatAgent, persona: Persona) -> None:
    console.print(
        f"[dim]You are talking to {persona.name or persona.id}. Help them feel better.[/]"
    )
    token = CancellationToken()
    response = await user.on_messages([], token)
    while True:
        message = response.chat_message
        meta = EmotionMetadata.from_metadata(message.metadata)
        assert meta is not None
        console.print(
            f"{_emotion_tag(meta)}  [bold cyan]{persona.name or 'user'}[/]  {message.to_text()}"
        )
        if meta.terminal:
            console.print(f"[bold]dialogue over: {meta.reason}, final emotion {meta.score}[/]")
            return
        text = _ask()
        if text is None:
            return
        response = await user.on_messages([TextMessage(content=text, source="you")], token)


async def _chat_as_user(run: RunConfig, persona: Persona) -> None:
    from rlver_agents.builders import ClientPool, agent_factory, build_appraiser
    from rlver_agents.episodes.episode import EpisodeContext

    rules = run.emotion_rules()
    context = EpisodeContext(persona=persona, rules=rules, seed=run.seed)
    pool = ClientPool()
    agent = agent_factory(run, pool)(context)
    appraiser = build_appraiser(run, pool, run.seed)
    try:
        await _converse_with_agent(agent, appraiser, persona, rules)
    finally:
        await pool.close()


async def _converse_with_agent(
    agent: ChatAgent, appraiser: BaseAppraiser, persona: Persona, rules: EmotionRules
) -> None:
    from rlver_agents.appraisers.appraisal import DialogueTurn
    from rlver_agents.emotion import apply_change, initial_state

    state = initial_state(rules)
    history: list[DialogueTurn] = []
    console.print(f"[bold]You play {persona.name or persona.id}.[/] {persona.scene}")
    console.print(f"[dim]Your hidden need: {persona.hidden_need}[/]")
    token = CancellationToken()
    while not state.terminal:
        text = _ask()
        if text is None:
            return
        history.append(DialogueTurn(role="user", text=text))
        response = await agent.on_messages([TextMessage(content=text, source="user")], token)
        reply = response.chat_message.to_text()
        appraisal = await appraiser.appraise(
            persona=persona,
            history=history,
            agent_message=reply,
            state=state,
            rules=rules,
            cancellation_token=token,
        )
        state = apply_change(state, appraisal.change, rules)
        history.append(DialogueTurn(role="agent", text=reply))
        console.print(f"       [bold magenta]agent[/] {reply}")
        console.print(
            f"{_emotion_tag(EmotionMetadata.from_state(state))}  [dim]{appraisal.reaction}[/]"
        )
    console.print(f"[bold]dialogue over: {state.reason}, final emotion {state.score}[/]")


if __name__ == "__main__":
    app()
