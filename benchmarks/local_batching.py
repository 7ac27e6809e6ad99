"""Throughput of the local client's request batching on the embedded model.

For 1, 4 and 8 concurrent requests, the same greedy requests are run once one after another
and once all at once (so the engine batches them), alternating within each repeat, and the
generated tokens per second of both are compared. Greedy decoding makes both runs produce the
same tokens, so the ratio is a pure speed ratio.

Run: ``python benchmarks/local_batching.py [--max-new-tokens 32] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

from autogen_core.models import SystemMessage, UserMessage

from rlver_agents.models.local import LocalChatCompletionClient

PROMPTS = [
    "I failed my driving test for the second time today.",
    "My best friend is moving to another country next month.",
    "Nobody at work noticed that I stayed late all week.",
    "My cat has been sick and the vet bills are piling up.",
    "I keep arguing with my brother about our parents.",
    "I got rejected from the job I really wanted.",
    "I feel lonely since I moved to this new city.",
    "My thesis advisor said my draft needs a complete rewrite.",
]
SYSTEM = "You are a warm, attentive listener. Answer in two or three sentences."


def _client(max_new_tokens: int) -> LocalChatCompletionClient:
    return LocalChatCompletionClient("embedded", greedy=True, max_new_tokens=max_new_tokens)


def _messages(prompt: str) -> list[SystemMessage | UserMessage]:
    return [SystemMessage(content=SYSTEM), UserMessage(content=prompt, source="user")]


async def _sequential(prompts: Sequence[str], max_new_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = 0
    for prompt in prompts:
        result = await _client(max_new_tokens).create(_messages(prompt))
        tokens += result.usage.completion_tokens
    return tokens, time.perf_counter() - start


async def _concurrent(prompts: Sequence[str], max_new_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(_client(max_new_tokens).create(_messages(prompt)) for prompt in prompts)
    )
    return sum(r.usage.completion_tokens for r in results), time.perf_counter() - start


async def main(levels: Sequence[int], max_new_tokens: int, repeats: int) -> None:
    warm = _client(max_new_tokens)
    await warm.create(_messages("Hello."))  # loads the shared engine
    engine = warm.engine
    print(f"model: {engine.key.path}")
    print(f"max_new_tokens={max_new_tokens}, greedy, repeats={repeats}")
    print("speed-up: median over repeats of (batched tok/s) / (sequential tok/s)\n")
    print(
        f"{'concurrent':>10} {'seq tok/s':>10} {'batch tok/s':>12} "
        f"{'speed-up':>9} {'range':>13} {'batches':>8}"
    )
    for level in levels:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(level)]
        seq_rates: list[float] = []
        batch_rates: list[float] = []
        ratios: list[float] = []
        batch_sizes: set[int] = set()
        for repeat in range(repeats):
            # alternate the order so slow drifts in machine load hit both sides alike
            order = ("seq", "batch") if repeat % 2 == 0 else ("batch", "seq")
            rates: dict[str, float] = {}
            for mode in order:
                if mode == "seq":
                    tokens, seconds = await _sequential(prompts, max_new_tokens)
                else:
                    before = len(engine.batch_sizes)
                    tokens, seconds = await _concurrent(prompts, max_new_tokens)
                    batch_sizes.update(engine.batch_sizes[before:])
                rates[mode] = tokens / seconds
            seq_rates.append(rates["seq"])
            batch_rates.append(rates["batch"])
            ratios.append(rates["batch"] / rates["seq"])
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        sizes = ",".join(str(s) for s in sorted(batch_sizes))
        print(
            f"{level:>10} {statistics.median(seq_rates):>10.1f} "
            f"{statistics.median(batch_rates):>12.1f} {statistics.median(ratios):>8.2f}x "
            f"{spread:>13} {sizes:>8}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.levels, args.max_new_tokens, args.repeats))
