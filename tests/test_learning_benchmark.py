"""The learning benchmark's statistics and the reply classes it reports, on made-up scores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
