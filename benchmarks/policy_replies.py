"""Sample a policy's replies to corpus contexts, for labelling into the appraisal corpus.

The corpus must hold the text the policy really writes, not only text written for it. This
plays the policy exactly as the CPU training configuration samples it (its system prompt,
temperature, stop string and token cap) on dialogue contexts taken from corpus files, and
writes unlabelled rows (``persona_id``, ``history``, ``reply``, ``source``) to label by the
rubric of ``docs/appraisal-corpus.md``.

    python benchmarks/policy_replies.py --contexts corpus.jsonl --split train \
        --source policy-base --per-context 1 --limit 300 --out base-train.jsonl
    python benchmarks/policy_replies.py --model runs/x/checkpoint-8 --source policy-trained ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path

from autogen_core.models import AssistantMessage, LLMMessage, SystemMessage, UserMessage

from rlver_agents.appraisers.appraisal import DialogueTurn
from rlver_agents.models.spec import ModelSpec, build_chat_client
from rlver_agents.personas import load_split
from training.config import load_train_config

CONFIG = Path(__file__).resolve().parent.parent / "training/configs/smollm2-cpu-grpo.yaml"


def contexts_of(path: Path, personas: set[str]) -> list[tuple[str, tuple[DialogueTurn, ...]]]:
    """The distinct (persona, dialogue so far) pairs of a corpus file, in file order."""
    seen: dict[tuple[str, str], tuple[str, tuple[DialogueTurn, ...]]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["persona_id"] not in personas:
            continue
        history = tuple(DialogueTurn.model_validate(t) for t in row["history"])
        key = (row["persona_id"], json.dumps(row["history"]))
        seen.setdefault(key, (row["persona_id"], history))
    return list(seen.values())


async def sample(args: argparse.Namespace) -> None:
    train = load_train_config(CONFIG)
    rollout = train.rollout
    spec = ModelSpec(
        kind="local" if args.model else "embedded",
        model=str(args.model) if args.model else None,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_new_tokens=rollout.max_new_tokens,
        stop=list(rollout.stop),
        seed=args.seed,
    )
    client = build_chat_client(spec)
    system = train.policy.system_message or ""
    personas = {p.id for p in load_split(args.split)}
    contexts = [c for path in args.contexts for c in contexts_of(path, personas)]
    random.Random(args.seed).shuffle(contexts)
    contexts = contexts[: args.limit]

    async def one(history: tuple[DialogueTurn, ...]) -> str:
        messages: list[LLMMessage] = [SystemMessage(content=system)]
        for turn in history:
            if turn.role == "user":
                messages.append(UserMessage(content=turn.text, source="user"))
            else:
                messages.append(AssistantMessage(content=turn.text, source="agent"))
        result = await client.create(messages)
        return result.content if isinstance(result.content, str) else ""

    jobs = [(pid, h) for pid, h in contexts for _ in range(args.per_context)]
    replies = await asyncio.gather(*(one(h) for _, h in jobs))
    with args.out.open("w") as handle:
        for (pid, history), reply in zip(jobs, replies, strict=True):
            row = {
                "persona_id": pid,
                "history": [t.model_dump() for t in history],
                "reply": reply.strip(),
                "source": args.source,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(jobs)} replies written to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=Path, nargs="+", required=True)
    parser.add_argument("--split", choices=["train", "test"], required=True)
    parser.add_argument("--model", type=Path, help="A checkpoint; the embedded model if unset.")
    parser.add_argument("--source", choices=["policy-base", "policy-trained"], required=True)
    parser.add_argument("--per-context", type=int, default=1)
    parser.add_argument("--limit", type=int, default=300, help="Contexts at most.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    asyncio.run(sample(parser.parse_args()))


if __name__ == "__main__":
    main()
