"""How fast the offline appraisers score replies on this machine, side by side in one run.

Both appraisers score the same corpus rows (the validation rows, 22 test personas):

- **batched**: every row in batches of 32 (the learned judge; how a trainer or a probe scores
  many candidates), and one encoder call per dialogue context (the embedding appraiser);
- **one at a time**: each reply alone, as the simulated user appraises a dialogue's turn.

Models are loaded and warmed up before the clock starts. Prints ms per message and the
learned judge's time as a multiple of the embedding appraiser's.

    python benchmarks/judge_speed.py [--threads 2] [--rows 256]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Callable

from rlver_agents.appraisers.corpus import CorpusRow, load_corpus
from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser
from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser, judge_pair
from rlver_agents.personas import Persona, load_split


def timed(work: Callable[[], object], messages: int) -> float:
    """Milliseconds per message of one run of ``work``."""
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1000 / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rows", type=int, default=256, help="Validation rows timed.")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    personas: dict[str, Persona] = {p.id: p for p in load_split("test")}
    rows: list[CorpusRow] = load_corpus("validation")[: args.rows]
    learned, embedding = LearnedAppraiser(), EmbeddingAppraiser()
    pairs = [judge_pair(personas[r.persona_id], r.history, r.reply) for r in rows]
    contexts: dict[tuple, list[str]] = defaultdict(list)
    for row in rows:
        contexts[(row.persona_id, row.history)].append(row.reply)
    learned.predict_pairs(pairs[:8])  # load and warm up
    embedding.scores_many(personas[rows[0].persona_id], [rows[0].reply], rows[0].history)

    figures = {
        ("learned", "batched"): timed(lambda: learned.predict_pairs(pairs), len(rows)),
        ("embedding", "batched"): timed(
            lambda: [
                embedding.scores_many(personas[pid], replies, history)
                for (pid, history), replies in contexts.items()
            ],
            len(rows),
        ),
        ("learned", "one at a time"): timed(
            lambda: [learned.predict_pairs([pair]) for pair in pairs], len(rows)
        ),
        ("embedding", "one at a time"): timed(
            lambda: [embedding.scores(personas[r.persona_id], r.reply, r.history) for r in rows],
            len(rows),
        ),
    }
    print(f"{len(rows)} validation rows, {args.threads} torch threads\n")
    print("| scoring | learned judge (ms/message) | embedding (ms/message) | learned / embedding |")
    print("| --- | --- | --- | --- |")
    for mode in ("batched", "one at a time"):
        mine, theirs = figures[("learned", mode)], figures[("embedding", mode)]
        print(f"| {mode} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f}x |")


if __name__ == "__main__":
    main()
