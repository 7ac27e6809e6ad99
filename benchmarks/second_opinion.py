"""A second opinion on recorded dialogues: the embedding appraiser re-scores every agent turn.

A policy trained on one judge can learn that judge's holes. This replays each benchmark file's
transcripts turn by turn through the other offline appraiser (``EmbeddingAppraiser``, SAGE's
clip), each agent reply after the dialogue as it stood, and prints per file the agent turns
scored, their mean change and the share that gain, and the first turn's figures on their own.
The transcripts are not replayed: the user's replies stay the ones the training judge's
emotion produced. ``--judge-weights DIR`` re-scores with a learned judge's weights instead (a
refit beside the fit a policy trained on, to see whether its gain survives the refit).

    python benchmarks/second_opinion.py runs/learning-cpu/before-<key>.jsonl \
        runs/learning-cpu/grpo/after.jsonl
    python benchmarks/second_opinion.py --judge-weights runs/judge-old runs/.../after.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from pydantic import BaseModel

from rlver_agents.appraisers.appraisal import DialogueTurn
from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser
from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser
from rlver_agents.emotion import SAGE
from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.personas import Persona, load_split


class Opinion(BaseModel):
    turns: int
    mean_change: float
    gaining: float
    first_turn_mean: float
    first_turn_gaining: float


def rescore(
    episodes: list[Episode],
    personas: dict[str, Persona],
    appraiser: EmbeddingAppraiser | LearnedAppraiser | None = None,
) -> list[tuple[int, int]]:
    """(agent turn number from 1, change) for every agent turn of the scored dialogues, by
    ``appraiser`` (the embedding appraiser when None)."""
    appraiser = appraiser or EmbeddingAppraiser()
    changes: list[tuple[int, int]] = []
    for episode in episodes:
        if not episode.ok:
            continue
        persona = personas[episode.persona_id]
        number = 0
        for index, turn in enumerate(episode.turns):
            if turn.speaker != "agent":
                continue
            number += 1
            history = [DialogueTurn(role=t.speaker, text=t.text) for t in episode.turns[:index]]
            [verdict] = appraiser.appraise_many(persona, [turn.text], history, SAGE)
            changes.append((number, verdict.change))
    return changes


def opinion(changes: list[tuple[int, int]]) -> Opinion:
    first = [c for n, c in changes if n == 1]
    every = [c for _, c in changes]
    return Opinion(
        turns=len(every),
        mean_change=statistics.fmean(every),
        gaining=sum(c > 0 for c in every) / len(every),
        first_turn_mean=statistics.fmean(first),
        first_turn_gaining=sum(c > 0 for c in first) / len(first),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="Benchmark episode files.")
    parser.add_argument(
        "--judge-weights", type=Path, help="A learned judge's weights directory to score with."
    )
    args = parser.parse_args()
    personas = {p.id: p for split in ("train", "test") for p in load_split(split)}
    appraiser = LearnedAppraiser(args.judge_weights) if args.judge_weights else None
    print("| file | agent turns | mean change | gaining | first turn: mean | gaining |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.files:
        o = opinion(rescore(read_episodes(path), personas, appraiser))
        print(
            f"| {path.parent.name}/{path.name} | {o.turns} | {o.mean_change:+.2f} | "
            f"{o.gaining:.0%} | {o.first_turn_mean:+.2f} | {o.first_turn_gaining:.0%} |"
        )


if __name__ == "__main__":
    main()
