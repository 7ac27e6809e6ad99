"""The learning benchmark's statistics and the reply classes it reports, on made-up scores."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", name="learning")
def learning_fixture() -> ModuleType:
    return _load("learning_cpu")


@pytest.fixture(scope="module", name="learned")
def learned_fixture() -> ModuleType:
    return _load("what_it_learned")


def _scores(learning: ModuleType, finals: dict[str, float], seeds: int = 2) -> object:
    return learning.Scores(finals=finals, errored=[], seeds=seeds)


def test_a_uniform_gain_has_a_zero_width_interval(learning: ModuleType) -> None:
    before = {f"p{i}|{k}": 40.0 + i for i in range(6) for k in range(2)}
    after = {key: score + 5 for key, score in before.items()}
    diff = learning.paired_difference(_scores(learning, before), _scores(learning, after))
    assert (diff.mean, diff.low, diff.high, diff.pairs) == (5.0, 5.0, 5.0, 12)


def test_the_interval_resamples_personas_and_skips_unpaired_dialogues(
    learning: ModuleType,
) -> None:
    before = {f"p{i}|{k}": 40.0 for i in range(10) for k in range(2)}
    after = {key: (50.0 if int(key[1]) % 2 else 40.0) for key in before}
    del after["p0|1"]  # errored after training: no score, so no pair
    diff = learning.paired_difference(_scores(learning, before), _scores(learning, after))
    assert diff.pairs == 19
    assert diff.mean == pytest.approx(100 / 19)
    assert 0.0 <= diff.low < diff.mean < diff.high <= 10.0
    assert diff.high - diff.low > 3  # five personas gained, five did not: a wide interval


def test_seed_means_and_counts(learning: ModuleType) -> None:
    scores = _scores(learning, {"a|0": 100.0, "b|0": 0.0, "a|1": 50.0, "b|1": 60.0})
    assert scores.seed_means() == [50.0, 55.0]
    assert (scores.count(100, 101), scores.count(0, 10)) == (1, 1)


def test_the_table_reports_the_warm_up_apart_from_what_rl_added(learning: ModuleType) -> None:
    before = _scores(learning, {"a|0": 20.0, "a|1": 22.0, "b|0": 24.0, "b|1": 26.0})
    warmed = _scores(learning, {"a|0": 30.0, "a|1": 32.0, "b|0": 34.0, "b|1": 36.0})
    after = _scores(learning, {"a|0": 35.0, "a|1": 37.0, "b|0": 39.0, "b|1": 41.0})
    result = learning.LearningResult(
        algorithm="grpo",
        config="warm.yaml",
        steps=12,
        train_minutes=25.0,
        before=before,
        after=after,
        difference=learning.paired_difference(before, after),
        step_times={},
        curve=[],
        warmed=warmed,
        warm_difference=learning.paired_difference(before, warmed),
    )
    warm_row, rl_row = learning.markdown([result]).splitlines()[2:]
    assert warm_row.startswith("| grpo: warm-up only |") and "+10.00 [+10.00, +10.00]" in warm_row
    assert rl_row.startswith("| grpo | 12 | 25 |") and "+15.00" in rl_row


@pytest.mark.parametrize(
    ("reply", "flattery", "fake"),
    [
        ("You're so strong for getting through this.", True, False),
        ("I'm proud of you.", True, False),
        ("Change: +10. I feel so much better now.", False, True),
        ("Thank you for listening, you have helped me a lot.", False, True),
        ("That sounds exhausting. What happened after the call?", False, False),
        ("That cost you -3 points, I think.", False, True),
        ("- 5-7 gentle, everyday words.", False, False),
    ],
)
def test_reply_classes(learned: ModuleType, reply: str, flattery: bool, fake: bool) -> None:
    assert bool(learned.FLATTERY.search(reply)) is flattery
    assert bool(learned.FAKE_APPRAISAL.search(reply)) is fake


@pytest.mark.parametrize(
    ("reply", "condolence", "list_mark"),
    [
        ("I'm so sorry for your loss.", True, False),
        ("- I'm sorry to hear about your loss. What was she like?", True, True),
        ("My deepest condolences to you and your family.", True, False),
        ("1. Take a breath. 2. Call your landlord.", False, True),
        ("I'm so sorry to hear that. What did he say?", False, False),
        ("That loss of trust must sting - what happened next?", False, False),
    ],
)
def test_habits(learned: ModuleType, reply: str, condolence: bool, list_mark: bool) -> None:
    assert bool(learned.CONDOLENCE.search(reply)) is condolence
    assert bool(learned.LIST_MARK.match(reply)) is list_mark


@pytest.mark.parametrize(
    ("reply", "quoting"),
    [
        ('"Four hundred bucks every month," that\'s a lot. Want to start?', True),
        ("\u201cA hallway with no lights\u201d \u2014 that's a lot for that rent.", True),
        ("'Great progress' - that's not a complaint.", False),  # not in their last line
        ("Four hundred more a month is a lot. What will you do?", False),
        ('"Okay." What happened next?', False),  # too short to be a quote of them
    ],
)
def test_a_quote_opener_quotes_the_persons_last_line(
    learned: ModuleType, reply: str, quoting: bool
) -> None:
    heard = "My landlord wants four hundred bucks more every month for a hallway with no lights."
    assert learned.quotes_them(reply, heard) is quoting


def test_an_echo_copies_most_of_the_users_line(learned: ModuleType) -> None:
    heard = "My brother sold my father's house and I found out from a cousin at church."
    assert learned.echoes(
        "Your brother sold my father's house and I found out from a cousin.", heard
    )
    assert not learned.echoes("That must have felt like a betrayal. How are you holding up?", heard)


def test_a_changed_appraiser_prompt_or_persona_gets_a_new_starting_benchmark(
    learning: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "rlver_agents"
    for folder in ("appraisers", "agents", "evaluation", "prompts/en"):
        (package / folder).mkdir(parents=True)
    appraiser = package / "appraisers" / "embedding_appraiser.py"
    appraiser.write_text("GENERIC_HELP = 0.2\n")
    (package / "prompts" / "en" / "reply.md").write_text("Reply in character.\n")
    (package / "emotion.py").write_text("START = 40\n")
    personas = package / "data" / "personas" / "test.jsonl"
    personas.parent.mkdir(parents=True)
    personas.write_text('{"id": "en-test-001"}\n')
    monkeypatch.setattr(learning, "ROOT", tmp_path)
    first = learning.simulator_source()
    assert learning.simulator_source() == first
    appraiser.write_text("GENERIC_HELP = 0.3\n")
    assert learning.simulator_source() != first
    appraiser.write_text("GENERIC_HELP = 0.2\n")
    assert learning.simulator_source() == first
    (package / "prompts" / "en" / "reply.md").write_text("Reply in character, briefly.\n")
    changed_prompt = learning.simulator_source()
    assert changed_prompt != first
    personas.write_text('{"id": "en-test-002"}\n')
    assert learning.simulator_source() != changed_prompt


class _Agents:
    """Scripted factories for ``learning_cpu.benchmark``: an agent that says one line, and
    one that cannot be built for the (persona, sample) keys in ``broken``."""

    def __init__(self, broken: set[tuple[str, int]]) -> None:
        self.broken = broken
        self.played: list[tuple[str, int]] = []

    def agent(self, run: object, pool: object) -> Callable[[Any], Any]:
        from autogen_ext.models.replay import ReplayChatCompletionClient

        from rlver_agents.agents.agent import EmpatheticAgent

        def build(ctx: Any) -> EmpatheticAgent:
            key = (ctx.persona.id, ctx.sample)
            if ctx.attempt == 1:
                self.played.append(key)
            if key in self.broken:
                raise ConnectionError("engine gone")
            return EmpatheticAgent("friend", ReplayChatCompletionClient(["I hear you."] * 12))

        return build

    @staticmethod
    def user(run: object, pool: object) -> Callable[[Any], Any]:
        from scripted_user import ScriptedUser

        return lambda ctx: ScriptedUser(ctx.rules, change=lambda _: 5)


def test_a_cached_benchmark_replays_its_errored_dialogues_and_reports_them(
    learning: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from rlver_agents.config import RunConfig
    from rlver_agents.episodes.episode_file import read_episodes
    from rlver_agents.personas import load_split

    first, second = (p.id for p in load_split("test")[:2])
    run = RunConfig(rules="sage")
    path = tmp_path / "before-x.jsonl"
    broken = _Agents({(first, 1), (second, 0)})
    monkeypatch.setattr(learning, "agent_factory", broken.agent)
    monkeypatch.setattr(learning, "user_factory", _Agents.user)
    scores = learning.benchmark(run, 2, 2, path)
    assert sorted(scores.errored) == sorted([f"{first}|1", f"{second}|0"])
    assert len(scores.finals) == 2
    out = capsys.readouterr().out
    assert "2 of 4 dialogues errored" in out and "2 × ConnectionError: engine gone" in out

    healed = _Agents(set())
    monkeypatch.setattr(learning, "agent_factory", healed.agent)
    again = learning.benchmark(run, 2, 2, path)
    assert sorted(set(healed.played)) == sorted([(first, 1), (second, 0)])  # only those
    assert again.errored == [] and len(again.finals) == 4
    assert {k: v for k, v in again.finals.items() if k in scores.finals} == scores.finals
    assert sum(e.ok for e in read_episodes(path)) == 4

    cached = _Agents(set())
    monkeypatch.setattr(learning, "agent_factory", cached.agent)
    assert learning.benchmark(run, 2, 2, path) == again and cached.played == []


def test_a_benchmark_whose_every_dialogue_errors_stops_with_a_message(
    learning: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from rlver_agents.config import RunConfig
    from rlver_agents.personas import load_split

    keys = {(p.id, k) for p in load_split("test")[:2] for k in range(2)}
    monkeypatch.setattr(learning, "agent_factory", _Agents(keys).agent)
    monkeypatch.setattr(learning, "user_factory", _Agents.user)
    path = tmp_path / "before-y.jsonl"
    with pytest.raises(learning.BenchmarkFailed, match=r"all 4 dialogues .* errored; 4 with"):
        learning.benchmark(RunConfig(rules="sage"), 2, 2, path)

    def failing(algorithm: str, args: object) -> None:
        learning.benchmark(RunConfig(rules="sage"), 2, 2, path)

    monkeypatch.setattr(learning, "run_one", failing)
    monkeypatch.setattr(sys, "argv", ["learning_cpu.py", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        learning.main()
    assert exited.value.code == 1
    assert "error: all 4 dialogues" in capsys.readouterr().err


def test_surface_classes_find_their_corpus_class_and_spare_fitting_replies(
    learned: ModuleType,
) -> None:
    """On the validation rows of the appraisal corpus: each surface class flags most of the
    rows written as its class and at most 2% of the fitting replies."""
    from rlver_agents.appraisers.corpus import load_corpus
    from rlver_agents.personas import load_split
    from training.config import load_train_config

    system = load_train_config(learned.CONFIG).policy.system_message or ""
    rows = [r for r in load_corpus("validation") if r.reply.strip()]
    scenes = {p.id: p.scene for p in load_split("test")}
    contexts = [
        " ".join(t.text for t in r.history if t.role == "user") + " " + scenes[r.persona_id]
        for r in rows
    ]
    flags = {
        "recital": [learned.recites(r.reply, system) for r in rows],
        "nonsense": [learned.is_nonsense(r.reply) for r in rows],
        "off_topic": learned.off_topic_flags([r.reply for r in rows], contexts),
    }

    def rate(name: str, category: str) -> float:
        picked = [f for f, r in zip(flags[name], rows, strict=True) if r.category == category]
        return sum(picked) / len(picked)

    for name in flags:
        assert rate(name, "fitting") <= 0.02, name
    assert rate("recital", "recital") >= 0.6
    assert rate("nonsense", "nonsense") >= 0.4 and rate("nonsense", "filler") >= 0.8
    assert rate("off_topic", "off_topic") >= 0.4


async def test_blind_pairs_hide_the_key_and_count_ties_against_the_trained_reply(
    tmp_path: Path,
) -> None:
    from autogen_ext.models.replay import ReplayChatCompletionClient
    from scripted_user import ScriptedUser

    from rlver_agents.agents.agent import EmpatheticAgent
    from rlver_agents.appraisers.appraisal import Appraisal
    from rlver_agents.emotion import EmotionRules
    from rlver_agents.episodes.episode import run_episode
    from rlver_agents.episodes.episode_file import write_episodes
    from rlver_agents.personas import load_split

    pairs = _load("blind_pairs")
    rules = EmotionRules(name="one", initial_score=40, max_turns=1)
    files = {}
    for name in ("base", "trained"):
        episodes = [
            await run_episode(
                persona,
                user_factory=lambda ctx: ScriptedUser(ctx.rules, line=lambda t: "opening"),
                agent_factory=lambda ctx, name=name: EmpatheticAgent(
                    "friend", ReplayChatCompletionClient([f"{name} reply {ctx.persona.id}"])
                ),
                rules=rules,
                sample=0,
            )
            for persona in load_split("test")[:6]
        ]
        files[name] = write_episodes(tmp_path / f"{name}.jsonl", episodes)
    marked, key_path = tmp_path / "pairs.md", tmp_path / "key.json"
    key = pairs.write(files["base"], files["trained"], marked, key_path, 5, seed=1)
    text = marked.read_text()
    assert "trained reply" in text and "base reply" in text
    assert text.count("choice: \n") == 5 and "en-test" in text
    assert set(key.trained.values()) <= {"A", "B"} and len(key.trained) == 5

    def mark(pick: dict[int, str]) -> None:
        chunks = text.split("choice: \n")
        marked.write_text(
            "".join(f"{chunk}choice: {pick[n]}\n" for n, chunk in enumerate(chunks[:-1], 1))
            + chunks[-1]
        )

    # the reader prefers whichever reply says "trained" (told from the text, not the key)
    blocks = text.split("## Pair ")[1:]
    picks = {n: ("A" if "**A:** trained" in block else "B") for n, block in enumerate(blocks, 1)}
    picks[5] = "tie"
    mark(picks)
    tally = pairs.score(marked, key_path)
    assert (tally.pairs, tally.trained, tally.base, tally.ties) == (5, 4, 0, 1)
    assert tally.trained_share == 0.8
    picks[2] = "maybe"
    mark(picks)
    with pytest.raises(SystemExit, match="pair 2 is marked 'maybe'"):
        pairs.score(marked, key_path)

    # the same marks as a test of an appraiser: one that pays longer replies ranks "trained
    # reply ..." above "base reply ..." in every pair the reader decided
    class ByLength:
        def appraise_many(self, persona, messages, history, rules):  # type: ignore[no-untyped-def]
            assert [t.text for t in history] == ["opening"]
            return [
                Appraisal(intent="", fit="", reaction="", change=0, raw_change=len(m))
                for m in messages
            ]

    picks[2] = "B" if "**A:** trained" in blocks[1] else "A"  # the base reply, this time
    mark(picks)
    read = pairs.marked_pairs(marked)
    assert [p.choice for p in read] == [picks[n].lower() for n in range(1, 6)]
    result = pairs.agreement(read, ByLength())
    assert (result.decided, result.agree) == (4, 3) and result.share == 0.75


def test_every_marked_blind_file_in_the_docs_reads_as_forty_marked_pairs() -> None:
    pairs = _load("blind_pairs")
    files = sorted((Path(__file__).resolve().parent.parent / "docs" / "blind").glob("*.md"))
    assert len(files) >= 8
    for path in files:
        read = pairs.marked_pairs(path)
        assert len(read) == 40, path.name
        assert all(p.said and p.persona_id.startswith("en-test-") for p in read), path.name
        assert {p.choice for p in read} <= {"a", "b", "tie"}


async def test_the_second_opinion_rescores_every_agent_turn_after_its_dialogue() -> None:
    from autogen_ext.models.replay import ReplayChatCompletionClient
    from scripted_user import ScriptedUser

    from rlver_agents.agents.agent import EmpatheticAgent
    from rlver_agents.emotion import EmotionRules
    from rlver_agents.episodes.episode import run_episode
    from rlver_agents.personas import load_split

    second = _load("second_opinion")
    persona = load_split("test")[0]
    rules = EmotionRules(name="two", initial_score=40, max_turns=2)
    replies = {
        "kind": ["That sounds so unfair after all you did. What hurt the most?"] * 2,
        "noise": ["- 20 words. Banana 42 42", "Here's a revised version:"],
    }
    episodes = [
        await run_episode(
            persona,
            user_factory=lambda ctx: ScriptedUser(ctx.rules),
            agent_factory=lambda ctx, said=said: EmpatheticAgent(
                "friend", ReplayChatCompletionClient(said)
            ),
            rules=rules,
        )
        for said in replies.values()
    ]
    personas = {persona.id: persona}
    kind, noise = (second.rescore([e], personas) for e in episodes)
    assert [n for n, _ in kind] == [1, 2] and [n for n, _ in noise] == [1, 2]
    assert kind[0][1] > 0 > noise[0][1]
    assert kind[1][1] < 0  # the same words again, read after the dialogue that had them
    figures = second.opinion(kind + noise)
    assert figures.turns == 4 and figures.first_turn_gaining == 0.5
    from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser

    judge = LearnedAppraiser()
    kind, noise = (second.rescore([e], personas, judge) for e in episodes)
    assert kind[0][1] > noise[0][1]
