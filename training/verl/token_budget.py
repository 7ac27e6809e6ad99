"""Per-dialogue token counts from an episode file, for sizing a verl run. verl-free.

For every scored episode it counts, with one tokenizer's chat template:

- the policy's token stream as the dialogue loop builds it: the prompt (system message and
  the user's opening), the policy's own tokens (each reply and its end-of-turn token) and the
  user replies appended between them (the closing reply is never appended);
- the simulated user's calls: the judge's prompt as `LLMAppraiser` renders it for each agent
  turn, and the voice calls' prompt and completion tokens as the episode recorded them
  (``Turn.usage`` of user turns, when the judge was not a model).

    python -m training.verl.token_budget episodes.jsonl --personas test --tokenizer <dir>
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from rlver_agents.agents.agent import default_system_message
from rlver_agents.appraisers.appraisal import DialogueTurn, build_appraisal_messages
from rlver_agents.emotion import EmotionRules, initial_state, replay
from rlver_agents.episodes.episode import Episode
from rlver_agents.jsonl import RecordFileError
from rlver_agents.personas import Persona, load_split


class DialogueTokens(BaseModel):
    """Token counts of one dialogue."""

    persona_id: str
    agent_turns: int
    prompt: int
    policy: int
    user_appended: int
    judge_prompt: int
    voice_prompt: int | None
    voice_completion: int | None

    @property
    def stream(self) -> int:
        """prompt + response: what one verl sample holds."""
        return self.prompt + self.policy + self.user_appended


def _chat_length(tokenizer: Any, chat: list[dict[str, str]], *, generation: bool) -> int:
    ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=generation)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return len(ids)


_BASE = [{"role": "system", "content": "."}]


def appended_user_tokens(tokenizer: Any, text: str) -> int:
    """Tokens one user reply adds to the stream: its template rendering and the next
    generation prompt, plus the newline verl inserts after the policy's end-of-turn token."""
    with_user = [*_BASE, {"role": "user", "content": text}]
    delta = _chat_length(tokenizer, with_user, generation=True)
    return delta - _chat_length(tokenizer, _BASE, generation=False) + 1


def count_dialogue(
    episode: Episode, persona: Persona, tokenizer: Any, *, think: bool = False
) -> DialogueTokens:
    """Token counts of one scored episode (see the module docstring).

    The policy's tokens are the recorded completion tokens of each agent turn where the
    episode has them, else the reply re-tokenized plus its end-of-turn token.
    """
    if not episode.ok:
        raise ValueError(f"episode of persona {episode.persona_id!r} errored: {episode.error}")
    rules = EmotionRules.model_validate(episode.config.rules)
    system = default_system_message(persona.language, think=think)
    llm_judge = episode.config.appraiser.get("kind") == "llm"
    history: list[DialogueTurn] = []
    changes: list[int] = []
    prompt = policy = appended = judge = agent_turns = 0
    voice_prompt = voice_completion = 0
    for index, turn in enumerate(episode.turns):
        if turn.speaker == "agent":
            agent_turns += 1
            state = replay(changes, rules) if changes else initial_state(rules)
            messages = build_appraisal_messages(
                persona, history, turn.text, state, rules, output_format="text"
            )
            judge += _chat_length(
                tokenizer,
                [
                    {"role": "system", "content": str(messages[0].content)},
                    {"role": "user", "content": str(messages[1].content)},
                ],
                generation=True,
            )
            recorded = turn.usage.completion_tokens if turn.usage else 0
            retokenized = len(tokenizer(turn.text, add_special_tokens=False)["input_ids"]) + 1
            policy += recorded or retokenized
            history.append(DialogueTurn(role="agent", text=turn.text))
            continue
        if turn.applied_change is not None:
            changes.append(turn.applied_change)
        if turn.usage is not None and not llm_judge:
            voice_prompt += turn.usage.prompt_tokens
            voice_completion += turn.usage.completion_tokens
        history.append(DialogueTurn(role="user", text=turn.text))
        if index == 0:
            opening = {"role": "user", "content": turn.text}
            prompt = _chat_length(
                tokenizer, [{"role": "system", "content": system}, opening], generation=True
            )
        elif index < len(episode.turns) - 1:
            appended += appended_user_tokens(tokenizer, turn.text)
    return DialogueTokens(
        persona_id=episode.persona_id,
        agent_turns=agent_turns,
        prompt=prompt,
        policy=policy,
        user_appended=appended,
        judge_prompt=judge,
        voice_prompt=None if llm_judge else voice_prompt,
        voice_completion=None if llm_judge else voice_completion,
    )


def count_file(
    path: Path, personas: Sequence[Persona], tokenizer: Any, *, think: bool = False
) -> list[DialogueTokens]:
    """Counts for every scored episode of ``path``; errored episodes are left out."""
    by_id = {persona.id: persona for persona in personas}
    counts: list[DialogueTokens] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        episode = Episode.model_validate_json(line)
        if not episode.ok:
            continue
        if episode.persona_id not in by_id:
            raise ValueError(f"{path}, line {number}: persona {episode.persona_id!r} not found")
        counts.append(count_dialogue(episode, by_id[episode.persona_id], tokenizer, think=think))
    return counts


FIELDS = ("agent_turns", "prompt", "policy", "user_appended", "stream", "judge_prompt")


def _table(counts: Sequence[DialogueTokens]) -> Table:
    table = Table("per dialogue", "mean", "min", "max")
    for field in (*FIELDS, "voice_prompt", "voice_completion"):
        values = [getattr(c, field) for c in counts if getattr(c, field) is not None]
        if values:
            table.add_row(
                field, f"{statistics.fmean(values):.0f}", str(min(values)), str(max(values))
            )
    return table


app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@app.command()
def main(
    episodes: Annotated[Path, typer.Argument(help="Episode JSONL (rlver collect / eval).")],
    tokenizer: Annotated[str, typer.Option(help="Tokenizer directory; 'embedded' for SmolLM2.")],
    personas: Annotated[str, typer.Option(help="Split or persona file of the episodes.")] = "test",
    think: Annotated[bool, typer.Option(help="The agent ran in think mode.")] = False,
) -> None:
    """Print per-dialogue token counts of an episode file."""
    from transformers import AutoTokenizer

    from rlver_agents.models.embedded import embedded_model_path

    path = embedded_model_path() if tokenizer == "embedded" else tokenizer
    try:
        counts = count_file(
            episodes, load_split(personas), AutoTokenizer.from_pretrained(path), think=think
        )
    except (RecordFileError, ValueError, OSError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    if not counts:
        Console(stderr=True).print(f"[red]error:[/red] {episodes}: no scored episode")
        raise typer.Exit(code=1)
    console = Console()
    console.print(f"{len(counts)} scored dialogues, tokenizer {path}")
    console.print(_table(counts))


if __name__ == "__main__":
    app()
