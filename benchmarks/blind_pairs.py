"""A blind pairwise read: would this person rather get the base policy's reply or the trained one's?

``write`` takes two benchmark episode files of ``benchmarks/learning_cpu.py`` (the same personas
and seeds, so the same openings) and writes ``--pairs`` reply pairs, each the two policies'
first replies to the same opening, in random order as A and B, to a Markdown file to be marked.
The key (which letter is the trained reply) goes to a separate JSON file. Read and mark every
pair (``choice: A``, ``B`` or ``tie``) before the key is opened; then ``score`` reads both files
and prints how often the trained reply was preferred, ties counting against it.

    python benchmarks/blind_pairs.py write runs/learning-cpu/before-<key>.jsonl \
        runs/learning-cpu/grpo/after.jsonl --out docs/blind/grpo-pairs.md --key runs/grpo-key.json
    python benchmarks/blind_pairs.py score docs/blind/grpo-pairs.md runs/grpo-key.json

``agree`` turns the marked files into a test of the judge: for every pair the reader did not
call a tie, does an appraiser score the preferred reply above the other? The pairs are real
policy replies to test personas, which no fit ever saw.

    python benchmarks/blind_pairs.py agree docs/blind/*.md [--weights-path runs/judge-trial]
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from pydantic import BaseModel

from rlver_agents.appraisers.appraisal import BaseAppraiser, DialogueTurn
from rlver_agents.emotion import SAGE
from rlver_agents.episodes.episode import Episode
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.personas import Persona, load_split

PAIR = re.compile(
    r"^## Pair (?P<number>\d+) \((?P<persona>[^,]+), seed \d+\)\n.*?"
    r"^- \*\*They said:\*\* (?P<said>.*?)\n- \*\*A:\*\* (?P<a>.*?)\n- \*\*B:\*\* (?P<b>.*?)\n"
    r".*?^choice:[ \t]*(?P<choice>\S*)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
CHOICE = re.compile(r"^choice:[ \t]*(\S*)[ \t]*$", re.MULTILINE | re.IGNORECASE)
HEADING = re.compile(r"^## Pair (\d+)\b", re.MULTILINE)


class Key(BaseModel):
    """Which letter holds the trained reply, per pair number (from 1)."""

    trained: dict[int, str]
    before: str
    after: str


class Tally(BaseModel):
    pairs: int
    trained: int
    base: int
    ties: int

    @property
    def trained_share(self) -> float:
        """Pairs where the trained reply was preferred; ties count against it."""
        return self.trained / self.pairs if self.pairs else 0.0


def first_replies(episodes: list[Episode]) -> dict[tuple[str, int], tuple[str, str]]:
    """(persona, seed) to (the opening, the policy's first reply), for dialogues that got that
    far."""
    return {
        e.key: (e.turns[0].text, e.turns[1].text)
        for e in episodes
        if len(e.turns) > 1 and e.turns[1].speaker == "agent"
    }


def write(before: Path, after: Path, out: Path, key_path: Path, count: int, seed: int) -> Key:
    base = first_replies(read_episodes(before))
    trained = first_replies(read_episodes(after))
    shared = sorted(k for k in base.keys() & trained.keys() if base[k][0] == trained[k][0])
    if len(shared) < count:
        raise SystemExit(f"only {len(shared)} openings are in both files; asked for {count}")
    rng = random.Random(seed)
    picked = sorted(rng.sample(shared, count), key=lambda k: (k[1], k[0]))
    personas: dict[str, Persona] = {p.id: p for s in ("train", "test") for p in load_split(s)}
    lines = [
        "# Blind pairs: which reply would this person rather get?",
        "",
        "Each pair is two replies to the same opening. Mark every pair before the key is",
        "opened: `choice: A`, `choice: B` or `choice: tie` (tie when neither is better).",
        "",
    ]
    letters: dict[int, str] = {}
    for number, pair in enumerate(picked, 1):
        opening, base_reply = base[pair]
        trained_reply = trained[pair][1]
        letter = rng.choice("AB")
        letters[number] = letter
        a, b = (trained_reply, base_reply) if letter == "A" else (base_reply, trained_reply)
        persona = personas.get(pair[0])
        who = f"{persona.profile} Hidden need: {persona.hidden_need}" if persona else pair[0]
        lines += [
            f"## Pair {number} ({pair[0]}, seed {pair[1]})",
            "",
            f"- **Who:** {who}",
            f"- **They said:** {opening}",
            f"- **A:** {a or '(nothing)'}",
            f"- **B:** {b or '(nothing)'}",
            "",
            "choice: ",
            "",
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    key = Key(trained=letters, before=str(before), after=str(after))
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(key.model_dump_json(indent=2))
    return key


def score(marked: Path, key_path: Path) -> Tally:
    """The marked file's choices against the key; every pair must be marked."""
    text = marked.read_text()
    numbers = [int(n) for n in HEADING.findall(text)]
    choices = [c.strip().lower() for c in CHOICE.findall(text)]
    if len(numbers) != len(choices):
        raise SystemExit(f"{marked}: {len(numbers)} pairs but {len(choices)} 'choice:' lines")
    key = Key.model_validate_json(key_path.read_text())
    if sorted(numbers) != sorted(key.trained):
        raise SystemExit(f"{marked} and {key_path} list different pairs")
    trained = base = ties = 0
    for number, choice in zip(numbers, choices, strict=True):
        if choice not in ("a", "b", "tie"):
            raise SystemExit(f"{marked}: pair {number} is marked {choice!r}; use A, B or tie")
        if choice == "tie":
            ties += 1
        elif choice.upper() == key.trained[number]:
            trained += 1
        else:
            base += 1
    return Tally(pairs=len(numbers), trained=trained, base=base, ties=ties)


class MarkedPair(BaseModel):
    """One marked pair, as the reader saw it."""

    persona_id: str
    said: str
    a: str
    b: str
    choice: str


class Agreement(BaseModel):
    """How often an appraiser ranks the reader's choice first, over pairs not marked a tie."""

    decided: int
    agree: int
    preferred_mean: float
    other_mean: float

    @property
    def share(self) -> float:
        return self.agree / self.decided if self.decided else 0.0


def marked_pairs(marked: Path) -> list[MarkedPair]:
    """Every pair of a marked file; an unmarked or unreadable pair is an error naming it."""
    text = marked.read_text()
    pairs = []
    for match in PAIR.finditer(text):
        choice = match["choice"].strip().lower()
        if choice not in ("a", "b", "tie"):
            raise SystemExit(f"{marked}: pair {match['number']} is marked {choice!r}")
        pairs.append(
            MarkedPair(
                persona_id=match["persona"],
                said=match["said"],
                a="" if match["a"] == "(nothing)" else match["a"],
                b="" if match["b"] == "(nothing)" else match["b"],
                choice=choice,
            )
        )
    if len(pairs) != len(HEADING.findall(text)):
        raise SystemExit(f"{marked}: {len(HEADING.findall(text))} pairs, {len(pairs)} readable")
    return pairs


def agreement(pairs: list[MarkedPair], appraiser: BaseAppraiser) -> Agreement:
    """The appraiser's predicted change for both replies of each decided pair, at the opening;
    an equal score counts as disagreeing."""
    personas: dict[str, Persona] = {p.id: p for s in ("train", "test") for p in load_split(s)}
    agree = 0
    preferred: list[float] = []
    other: list[float] = []
    decided = [p for p in pairs if p.choice != "tie"]
    for pair in decided:
        history = [DialogueTurn(role="user", text=pair.said)]
        a, b = (
            verdict.raw_change
            for verdict in appraiser.appraise_many(
                personas[pair.persona_id], [pair.a, pair.b], history, SAGE
            )
        )
        first, second = (a, b) if pair.choice == "a" else (b, a)
        agree += first > second
        preferred.append(first)
        other.append(second)
    return Agreement(
        decided=len(decided),
        agree=agree,
        preferred_mean=sum(preferred) / max(1, len(preferred)),
        other_mean=sum(other) / max(1, len(other)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write", help="Write the pairs to mark and their key.")
    w.add_argument("before", type=Path)
    w.add_argument("after", type=Path)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--key", type=Path, required=True)
    w.add_argument("--pairs", type=int, default=40)
    w.add_argument("--seed", type=int, default=0)
    s = commands.add_parser("score", help="Score a marked file against its key.")
    s.add_argument("marked", type=Path)
    s.add_argument("key", type=Path)
    g = commands.add_parser("agree", help="Does an appraiser rank the reader's choices first?")
    g.add_argument("marked", type=Path, nargs="+")
    g.add_argument("--weights-path", type=Path, help="A fitted judge; the shipped one if left out.")
    args = parser.parse_args()
    if args.command == "agree":
        from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser
        from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser

        appraisers = {
            "learned judge": LearnedAppraiser(args.weights_path),
            "embedding appraiser": EmbeddingAppraiser(),
        }
        print("| file | decided pairs | " + " | ".join(appraisers) + " |")
        print("| --- | --- |" + " --- |" * len(appraisers))
        every = [(path.name, marked_pairs(path)) for path in args.marked]
        every.append(("all", [pair for _, pairs in every for pair in pairs]))
        for name, pairs in every:
            cells = []
            for appraiser in appraisers.values():
                result = agreement(pairs, appraiser)
                cells.append(
                    f"{result.agree} ({100 * result.share:.0f}%; "
                    f"{result.preferred_mean:+.1f} vs {result.other_mean:+.1f})"
                )
            decided = sum(p.choice != "tie" for p in pairs)
            print(f"| {name} | {decided} | " + " | ".join(cells) + " |")
        return
    if args.command == "write":
        write(args.before, args.after, args.out, args.key, args.pairs, args.seed)
        print(f"{args.pairs} pairs in {args.out}; the key is in {args.key}: mark before opening it")
        return
    tally = score(args.marked, args.key)
    print(
        f"trained preferred in {tally.trained} of {tally.pairs} pairs "
        f"({100 * tally.trained_share:.0f}%, ties against it); base {tally.base}, "
        f"ties {tally.ties}"
    )


if __name__ == "__main__":
    main()
