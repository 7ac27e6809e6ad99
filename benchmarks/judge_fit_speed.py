"""How fast a judge fit steps on this machine, three ways side by side in one run.

The same batches of train corpus rows (16 a batch, grouped by length as the fit groups them)
take an AdamW step on the trained layers (3, 4, 5, the pooler and the head):

- **whole model**: every step runs the embeddings and all six encoder layers, the frozen ones
  included (how the judge was fitted before its frozen layers' outputs were cached);
- **cached**: the frozen layers run once per row, before the first step (the time is
  counted, spread over the fit's epochs); each step runs the trained layers only
  (``training.judge._UpperStack``), as ``rlver-judge train`` does;
- **cached, bfloat16**: the same under bfloat16 autocast (float32 weights), the
  ``bf16`` setting of ``JudgeTrainConfig``.

Prints seconds per step, each as a multiple of the whole model's, and the fit time they
project for the whole train corpus at the shipped epochs.

    python benchmarks/judge_fit_speed.py [--threads 2] [--steps 24]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import time
from collections.abc import Callable

import torch

from rlver_agents.appraisers.corpus import load_corpus
from rlver_agents.appraisers.learned_appraiser import (
    SCALE,
    encode_pairs,
    load_base_model,
    trained_prefixes,
)
from rlver_agents.personas import load_split
from training.judge import (
    JudgeTrainConfig,
    _collate,
    _examples,
    _frozen_outputs,
    _UpperStack,
)


def timed_steps(step: Callable[[int], None], steps: int) -> float:
    """Seconds per step over ``steps`` steps, after one untimed warm-up step."""
    step(0)
    started = time.perf_counter()
    for index in range(steps):
        step(index)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=24, help="Timed steps per mode.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = JudgeTrainConfig()
    first = min(config.layers)
    personas = {p.id: p for p in load_split("train")}
    corpus = load_corpus("train")
    rows = random.Random(0).sample(corpus, args.steps * config.batch_size)
    pairs = _examples(rows, personas)
    targets = torch.tensor([r.change / SCALE for r in rows])
    # batches of similar length, as the fit's length-grouped sampler makes them
    order = sorted(range(len(rows)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    model, tokenizer = load_base_model()
    trained = trained_prefixes(config.layers)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(trained)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )

    def whole_step(index: int) -> None:
        chunk = batches[index]
        logits = model(**encode_pairs(tokenizer, [pairs[i] for i in chunk])).logits
        loss = torch.nn.functional.mse_loss(logits.squeeze(-1), targets[chunk])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    started = time.perf_counter()
    cached = _frozen_outputs(model, tokenizer, pairs, first)
    cache_seconds = time.perf_counter() - started
    upper = _UpperStack(model, first)

    def cached_step(bf16: bool) -> Callable[[int], None]:
        def step(index: int) -> None:
            chunk = batches[index]
            batch = _collate(
                [{"hidden_states": cached[i][1], "labels": float(targets[i])} for i in chunk]
            )
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            )
            with autocast:
                loss = upper(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return step

    model.train()
    cache_per_step = cache_seconds / args.steps / config.epochs
    figures = {
        "whole model": timed_steps(whole_step, args.steps),
        "cached": timed_steps(cached_step(False), args.steps) + cache_per_step,
        "cached, bfloat16": timed_steps(cached_step(True), args.steps) + cache_per_step,
    }
    corpus_steps = len(corpus) / config.batch_size * config.epochs
    print(
        f"{args.steps} steps of {config.batch_size} rows, {torch.get_num_threads()} threads; "
        f"caching the frozen layers: {cache_seconds:.1f} s for {len(rows)} rows "
        f"({cache_per_step:.3f} s a step over {config.epochs:g} epochs, counted below)"
    )
    print("| mode | s per step | × whole model | projected fit of the corpus |")
    print("| --- | --- | --- | --- |")
    for mode, seconds in figures.items():
        ratio = seconds / figures["whole model"]
        minutes = seconds * corpus_steps / 60
        print(f"| {mode} | {seconds:.3f} | {ratio:.2f} | {minutes:.1f} min |")


if __name__ == "__main__":
    main()
