"""Generation speed against the machine's own floor: measured time ÷ the time its matmuls need.

In one run, on the embedded SmolLM2-135M:

1. The floor. Matrix-multiply throughput (FLOP/s) in float32 and bfloat16 at the model's
   shapes (hidden × hidden, hidden × kv, hidden × intermediate and back) weighted as in one
   forward, for a prefill-sized
   batch of rows (``--floor-rows``, default 512) and a decode-sized one (one row per dialogue).
2. A fixed workload through the engine: ``--dialogues`` concurrent dialogues of ``--turns``
   turns, each on its own seeded local client (as a run makes them), the prompt growing turn
   by turn by the reply and a scripted user message, as a dialogue does.
3. For each mode, prefill and decode time (the engine's own split), the FLOPs of the tokens
   processed (2 × non-embedding parameters per token, the vocabulary projection for each
   token whose logits are taken, 4 × layers × hidden per attended position), and measured ÷
   floor ("× floor"), where floor = FLOPs ÷ the prefill-sized throughput of step 1 in that
   dtype. The decode-sized throughput (with the vocabulary projection, which at few rows is
   bound by reading its weights) is printed too, but on shared cores it is no floor: two
   threads meeting at a barrier every few microseconds stall whenever another job holds a
   core, so at few rows it measures the load as much as the machine.

Modes run in one process, alternating within each repeat (the best of the repeats is kept):
``full`` re-prefills every prompt (the engine before prefix reuse), ``reuse`` extends each
dialogue's cached prefix, ``reuse-bf16`` does so on a bfloat16 copy of the model. The samples
of ``full`` and ``reuse`` are compared token by token (same seeds: same ids, logprobs within
1e-4); bfloat16's recorded logprobs are checked against its own rescoring forward pass.

Run: ``python benchmarks/speed_floor.py [--dialogues 8] [--turns 4] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

import torch
from autogen_core.models import AssistantMessage, LLMMessage, SystemMessage, UserMessage

from rlver_agents.models.embedded import embedded_model_path
from rlver_agents.models.engine import Engine, EngineStats, get_engine
from rlver_agents.models.local import LocalChatCompletionClient

PERSONA = (
    "You are Dana, a 34-year-old nurse who works night shifts at a busy city hospital. "
    "You are talking to a friend about your week. You feel tired and unappreciated: your "
    "manager changed the rota without asking, your partner forgot the dinner you had planned, "
    "and your mother keeps calling to ask when you will visit. You do not want advice, you "
    "want to be heard. Speak in the first person, in one or two short sentences, casually, and "
    "never say you are an AI. If the listener is kind and specific you open up a little; if "
    "they lecture you or change the subject you get short with them. Your hidden goal is to "
    "feel that someone understands how exhausted you are."
)
OPENERS = [
    "Honestly, this week has been a lot.",
    "I don't even know where to start.",
    "Can I just vent for a minute?",
    "Work was a nightmare again.",
    "I am so tired of everything right now.",
    "My manager did it again.",
    "Nobody at home noticed anything.",
    "I barely slept, and my mum called twice.",
]
FOLLOW_UPS = [
    "Yeah. And then my partner forgot our dinner, like it was nothing.",
    "It's not even the work, it's that nobody asks how I am doing.",
    "I guess. I just want one evening where nobody needs anything from me.",
    "Maybe. Thanks for listening, though, it helps a bit.",
    "I keep telling myself it will get better next month.",
]
MODES = ("full", "reuse", "reuse-bf16")


@dataclass
class Floor:
    """Best matmul throughput, FLOP/s, per dtype and batch of rows."""

    flops: dict[tuple[str, int], float]


def _model_shapes(config: object) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of one decoder layer."""
    hidden = config.hidden_size  # type: ignore[attr-defined]
    heads = config.num_attention_heads  # type: ignore[attr-defined]
    kv = config.num_key_value_heads * (hidden // heads)  # type: ignore[attr-defined]
    inter = config.intermediate_size  # type: ignore[attr-defined]
    return [
        (hidden, hidden),
        (hidden, kv),
        (hidden, kv),
        (hidden, hidden),
        (hidden, inter),
        (hidden, inter),
        (inter, hidden),
    ]


def measure_floor(config: object, rows: list[int], seconds: float = 0.3) -> Floor:
    """Throughput of a forward's matmuls per dtype and rows: each linear shape of a decoder
    layer (counted once per layer) and the vocabulary projection (``head``: counted once, with
    ``rows`` rows for decode, omitted for prefill, which projects one row per sequence), each
    timed by its fastest of repeated runs, as the shared cores' other jobs only slow one down.
    """
    layers = config.num_hidden_layers  # type: ignore[attr-defined]
    vocab = config.vocab_size  # type: ignore[attr-defined]
    hidden = config.hidden_size  # type: ignore[attr-defined]
    result: dict[tuple[str, int], float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        for m in rows:
            flops, floor_s = 0.0, 0.0
            cases = [(k, n, layers) for k, n in _model_shapes(config)]
            if m < 64:  # decode-sized: every token's logits
                cases.append((hidden, vocab, 1))
            for k, n, count in cases:
                w = torch.randn(n, k, dtype=dtype) * 0.02
                x = torch.randn(m, k, dtype=dtype)
                fastest, reps = float("inf"), 0
                with torch.inference_mode():
                    torch.nn.functional.linear(x, w)  # warm up
                    start = time.perf_counter()
                    while time.perf_counter() - start < seconds or reps < 5:
                        began = time.perf_counter()
                        torch.nn.functional.linear(x, w)
                        fastest = min(fastest, time.perf_counter() - began)
                        reps += 1
                flops += 2.0 * m * k * n * count
                floor_s += fastest * count
            result[(str(dtype).removeprefix("torch."), m)] = flops / floor_s
    return Floor(result)


def count_flops(config: object, stats: EngineStats, sequences: int) -> tuple[float, float]:
    """(prefill, decode) FLOPs of what the engine processed."""
    layers = config.num_hidden_layers  # type: ignore[attr-defined]
    hidden = config.hidden_size  # type: ignore[attr-defined]
    vocab = config.vocab_size  # type: ignore[attr-defined]
    per_token = 2.0 * layers * sum(k * n for k, n in _model_shapes(config))
    head = 2.0 * hidden * vocab
    attention = 4.0 * layers * hidden
    prefill = (
        per_token * stats.prefill_tokens + head * sequences + attention * stats.prefill_attended
    )
    decode = (per_token + head) * stats.decode_tokens + attention * stats.decode_attended
    return prefill, decode


async def _dialogue(engine: Engine, index: int, turns: int, max_new_tokens: int) -> list:
    client = LocalChatCompletionClient(
        engine=engine, temperature=0.7, seed=1000 + index, max_new_tokens=max_new_tokens
    )
    messages: list[LLMMessage] = [
        SystemMessage(content=PERSONA),
        UserMessage(content=OPENERS[index % len(OPENERS)], source="user"),
    ]
    for turn in range(turns):
        result = await client.create(messages)
        assert isinstance(result.content, str)
        follow = FOLLOW_UPS[(index + turn) % len(FOLLOW_UPS)]
        messages += [
            AssistantMessage(content=result.content, source="agent"),
            UserMessage(content=follow, source="user"),
        ]
    records = list(client.records)
    await client.close()
    return records


async def run_workload(
    engine: Engine, dialogues: int, turns: int, max_new_tokens: int
) -> tuple[float, list[list]]:
    start = time.perf_counter()
    records = await asyncio.gather(
        *(_dialogue(engine, i, turns, max_new_tokens) for i in range(dialogues))
    )
    return time.perf_counter() - start, list(records)


def _gap(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--floor-rows", type=int, default=512)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]

    print(f"load average at start: {os.getloadavg()}, torch threads: {torch.get_num_threads()}")
    path = embedded_model_path()
    engines = {"float32": get_engine(path, dtype="float32")}
    if "reuse-bf16" in modes:
        engines["bfloat16"] = get_engine(path, dtype="bfloat16")
    config = engines["float32"].model.config
    rows = sorted({args.floor_rows, args.dialogues})
    floor = measure_floor(config, rows)

    best: dict[str, tuple[float, EngineStats]] = {}
    samples: dict[str, list[list]] = {}
    for repeat in range(args.repeats):
        for mode in modes:
            engine = engines["bfloat16" if mode.endswith("bf16") else "float32"]
            engine.prefix_reuse = mode != "full"
            engine.stats = EngineStats()
            wall, records = asyncio.run(
                run_workload(engine, args.dialogues, args.turns, args.max_new_tokens)
            )
            stats = engine.stats
            print(
                f"repeat {repeat} {mode:10s}: {wall:6.2f} s (prefill {stats.prefill_s:5.2f} s, "
                f"decode {stats.decode_s:5.2f} s), load {os.getloadavg()[0]:.2f}"
            )
            if mode not in best or wall < best[mode][0]:
                best[mode] = (wall, stats)
            samples[mode] = records

    # measured again after the workload; the better of the two (the less disturbed) counts
    again = measure_floor(config, rows)
    print("\nmatmul throughput of a forward at the model's shapes (GFLOP/s), before, after:")
    for (dtype, m), value in sorted(floor.flops.items()):
        after = again.flops[(dtype, m)]
        print(f"  {dtype:9s} rows={m:4d}: {value / 1e9:8.1f} {after / 1e9:8.1f}")
        floor.flops[(dtype, m)] = max(value, after)
    sequences = args.dialogues * args.turns
    print(
        f"\n{args.dialogues} dialogues × {args.turns} turns, up to {args.max_new_tokens} new "
        f"tokens a turn; best of {args.repeats}; floor = FLOPs ÷ measured matmul throughput"
    )
    header = (
        f"{'mode':10s} {'wall s':>7s} | {'prefill s':>9s} {'tokens':>7s} {'reused':>7s} "
        f"{'GFLOP':>6s} {'× floor':>8s} | {'decode s':>8s} {'tokens':>7s} {'GFLOP':>6s} "
        f"{'× floor':>8s}"
    )
    print(header)
    print("-" * len(header))
    for mode in modes:
        wall, stats = best[mode]
        dtype = "bfloat16" if mode.endswith("bf16") else "float32"
        peak = floor.flops[(dtype, args.floor_rows)]
        prefill, decode = count_flops(config, stats, sequences)
        prefill_x = stats.prefill_s / (prefill / peak)
        decode_x = stats.decode_s / (decode / peak)
        print(
            f"{mode:10s} {wall:7.2f} | {stats.prefill_s:9.2f} {stats.prefill_tokens:7d} "
            f"{stats.reused_tokens:7d} {prefill / 1e9:6.1f} {prefill_x:8.1f}"
            f" | {stats.decode_s:8.2f} {stats.decode_tokens:7d} {decode / 1e9:6.1f} "
            f"{decode_x:8.1f}"
        )
    if "full" in best:
        for mode in modes:
            if mode != "full":
                print(f"speed-up of {mode} over full: {best['full'][0] / best[mode][0]:.2f}×")

    if "full" in samples and "reuse" in samples:
        same_ids = all(
            a.completion_token_ids == b.completion_token_ids
            for x, y in zip(samples["full"], samples["reuse"], strict=True)
            for a, b in zip(x, y, strict=True)
        )
        gap = max(
            _gap(a.completion_logprobs, b.completion_logprobs)
            for x, y in zip(samples["full"], samples["reuse"], strict=True)
            for a, b in zip(x, y, strict=True)
            if a.completion_token_ids == b.completion_token_ids
        )
        print(f"\nfull vs reuse: same sampled ids: {same_ids}; max logprob gap {gap:.2e}")
    if "reuse-bf16" in samples:
        engine = engines["bfloat16"]
        gap = 0.0
        for dialogue in samples["reuse-bf16"][:2]:
            for record in dialogue:
                rescored = engine.score(
                    record.prompt_token_ids,
                    record.completion_token_ids,
                    temperature=record.sampling.temperature,
                )
                gap = max(gap, _gap(record.completion_logprobs, rescored))
        print(f"bf16: recorded vs its own rescoring forward, max logprob gap {gap:.2e}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
