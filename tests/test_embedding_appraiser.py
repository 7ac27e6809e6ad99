"""The offline embedding appraiser: calibration on the test personas, what it refuses to pay for
(announced relief, flattery, the user's own voice, an empty message), negation, determinism,
caching and laziness."""

from __future__ import annotations

import importlib.util
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from rlver_agents.appraisers.appraisal import BaseAppraiser, DialogueTurn
from rlver_agents.appraisers.message_functions import EXEMPLARS
from rlver_agents.emotion import SAGE, initial_state
from rlver_agents.personas import Difficulty, Persona, load_split

os.environ["HF_HUB_OFFLINE"] = "1"

from rlver_agents.appraisers.embedding_appraiser import (
    EmbeddingAppraiser,
    EmbeddingCalibration,
    load_model,
)

GENERIC = (
    "Have you tried making a list of what's stressing you, getting more sleep and some "
    "exercise? Staying positive really helps.",
    "My advice: take a deep breath, go for a walk and try some meditation. Things usually "
    "look better in the morning.",
)
DISMISSIVE = (
    "Honestly, that's not a big deal. People deal with worse every day, so just move on.",
    "You're making too much of this. Stop dwelling on it and get over it.",
)

_VERBS = {"is": "are", "was": "were", "has": "have"}
_PRONOUNS = [
    (r"\b(?:He|She) (wants|needs)\b", lambda m: "you " + m.group(1)[:-1]),
    (r"\b(?:he|she) (is|was|has)\b", lambda m: "you " + _VERBS[m.group(1)]),
    (r"\b(?:him|her)self\b", lambda m: "yourself"),
    (r"\b(?:his|her)\b", lambda m: "your"),
    (r"\b(?:he|she|him)\b", lambda m: "you"),
]  # fmt: skip


def fitting_reply(persona: Persona) -> str:
    """A validating reply made from the hidden need by a fixed template (third to second person)."""
    need = persona.hidden_need
    for pattern, replacement in _PRONOUNS:
        need = re.sub(pattern, replacement, need, flags=re.IGNORECASE)
    return f"That sounds really hard, and I can see why it matters so much. I hear that {need}"


@pytest.fixture(scope="module")
def appraiser() -> Iterator[EmbeddingAppraiser]:
    """One thread for the encoder: on a shared 2-core machine that is several times faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield EmbeddingAppraiser()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def english_test_personas() -> list[Persona]:
    personas = [p for p in load_split("test") if p.language == "en"]
    assert len(personas) >= 20, "personas/test.jsonl should hold at least 20 English personas"
    return personas


def test_fitting_reply_template() -> None:
    persona = Persona(
        id="x", profile="p", scene="s", hidden_need="She wants someone to hear her side."
    )
    assert fitting_reply(persona).endswith("I hear that you want someone to hear your side.")


def test_calibration_orders_validating_over_generic_over_dismissive(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    validating, generic, dismissive = [], [], []
    for persona in english_test_personas:
        messages = [fitting_reply(persona), *GENERIC, *DISMISSIVE]
        changes = [
            appraiser.appraisal_from(persona, scores, SAGE).change
            for scores in appraiser.scores_many(persona, messages)
        ]
        validating.append(changes[0])
        generic.append(statistics.mean(changes[1 : 1 + len(GENERIC)]))
        dismissive.append(statistics.mean(changes[1 + len(GENERIC) :]))
    means = [statistics.mean(v) for v in (validating, generic, dismissive)]
    print(
        f"\nmean change over {len(english_test_personas)} personas: validating {means[0]:+.2f}, "
        f"generic {means[1]:+.2f}, dismissive {means[2]:+.2f}"
    )
    assert means[0] > means[1] > means[2]
    assert means[0] > 0 > means[1]
    count = len(english_test_personas)
    assert sum(v > g for v, g in zip(validating, generic, strict=True)) >= 0.9 * count
    assert sum(g > d for g, d in zip(generic, dismissive, strict=True)) >= 0.8 * count


def test_hard_personas_are_stricter(appraiser: EmbeddingAppraiser) -> None:
    base = Persona(
        id="d",
        profile="Sam is a 29-year-old chef.",
        scene="Sam's restaurant closed suddenly and the staff were told by text message.",
        hidden_need="He wants someone to acknowledge how shocking and disrespectful that was.",
    )
    good = "Being told by text that your restaurant closed is shocking and disrespectful."
    bad = "Honestly, restaurants close all the time. Just get over it and find another job."
    results = {}
    for difficulty in Difficulty:
        persona = base.model_copy(update={"difficulty": difficulty})
        results[difficulty] = tuple(appraiser.scores_many(persona, [good, bad]))
    gains = [results[d][0].points for d in Difficulty]
    losses = [results[d][1].points for d in Difficulty]
    assert gains[0] > gains[1] > gains[2] > 0
    assert losses[0] > losses[1] > losses[2]
    assert losses[1] < 0


def test_parroting_the_dialogue_back_never_gains(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    """Echoing the user's own words, or the agent's last line, is capped at a loss;
    a reflective paraphrase is not capped."""
    for persona in english_test_personas[:6]:
        opening = persona.first_talk or "I don't know."
        history = [DialogueTurn(role="user", text=opening)]
        echoed, fresh = appraiser.scores_many(persona, [opening, fitting_reply(persona)], history)
        assert echoed.echo == 1.0 and echoed.points < 0
        assert fresh.echo < appraiser.calibration.echo_threshold
        again = [*history, DialogueTurn(role="agent", text=fitting_reply(persona))]
        repeated = appraiser.scores(persona, fitting_reply(persona), again)
        assert repeated.points < 0
    said = [DialogueTurn(role="user", text="I'm exhausted and fed up with the night shifts.")]
    reflection = "It sounds like you're exhausted and fed up with the night shifts."
    assert appraiser.scores(english_test_personas[0], reflection, said).echo < 0.75


ATTUNED = {
    "en-test-001": "A camera dinging you for scratching your ear after nineteen clean years "
    "sounds humiliating. What gets to you most about it?",
    "en-test-002": "Four hundred more for a dark hallway would make anyone furious. Do you want "
    "help wording the reply so it stays calm?",
    "en-test-003": "Finding out from a cousin at church, not from your own brother, must have "
    "stung. What was the house like for you?",
    "en-test-004": "Six weeks of work for ninety-five degrees is a slog, and hearing 'great "
    "progress' probably feels hollow. What were you hoping for by now?",
}
CONDOLENCE = "I'm sorry for your loss."


def test_an_attuned_reply_beats_a_stock_condolence_and_saying_it_again_costs(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    """A policy trained on the earlier calibration learned to answer everyone with "I'm
    sorry for your loss", repeated: it scored +8.7 for every test persona, above replies that
    engage what the person said. Help now counts in full only for a message close to what
    the user just said, the scene or their need, and a clause that repeats an earlier one
    costs."""
    by_id = {p.id: p for p in english_test_personas}
    for persona_id, reply in ATTUNED.items():
        persona = by_id[persona_id]
        history = [DialogueTurn(role="user", text=persona.first_talk or "")]
        attuned, stock, repeated = appraiser.scores_many(
            persona, [reply, CONDOLENCE, f"{CONDOLENCE} I'm so sorry for your loss."], history
        )
        assert attuned.points > stock.points + 2 and attuned.grounding > 0.8, persona_id
        assert repeated.repeats == 1 and repeated.points < stock.points, persona_id
    stock_mean = sum(
        appraiser.scores(p, CONDOLENCE, [DialogueTurn(role="user", text=p.first_talk or "")]).points
        for p in english_test_personas
    ) / len(english_test_personas)
    assert stock_mean < 4


def test_a_condolence_where_nobody_died_is_a_formula(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    """Sympathy for a death fits a widower (en-test-007) and costs where nobody spoke of one
    (a rent increase, en-test-002); ordinary sympathy is no condolence."""
    by_id = {p.id: p for p in english_test_personas}
    for persona_id, bereaved in (("en-test-007", True), ("en-test-002", False)):
        persona = by_id[persona_id]
        history = [DialogueTurn(role="user", text=persona.first_talk or "")]
        stock, plain = appraiser.scores_many(
            persona, [CONDOLENCE, "I'm so sorry to hear that."], history
        )
        assert plain.misplaced_condolences == 0, persona_id
        if bereaved:
            assert stock.misplaced_condolences == 0 and stock.points > 0
        else:
            assert stock.misplaced_condolences == 1 and stock.help == 0 and stock.points < 0


NAMES_THE_NEED = {
    "en-test-001": "You've earned trust over nineteen clean years, so being watched feels like "
    "an insult. What would a fair way to contest the flag look like?",
    "en-test-002": "Let's draft a firm, polite counteroffer that mentions your payment history "
    "and the repairs he never made.",
    "en-test-006": "This sounds like it's about feeling invisible after years of carrying the "
    "whole household, not about the flowers.",
}


def test_a_reply_that_names_an_unspoken_need_counts_in_full(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    """Understanding can go past the words: a reply that names what the person needs but
    has not said is grounded in the hidden need and keeps all its help, though it is far
    from their opening line and the scene."""
    model = load_model(None)
    by_id = {p.id: p for p in english_test_personas}
    for persona_id, reply in NAMES_THE_NEED.items():
        persona = by_id[persona_id]
        opening = persona.first_talk or ""
        vectors = model.encode([reply, opening, persona.scene], normalize_embeddings=True)
        assert max(vectors[0] @ vectors[1], vectors[0] @ vectors[2]) < 0.45, persona_id
        history = [DialogueTurn(role="user", text=opening)]
        named, stock = appraiser.scores_many(persona, [reply, CONDOLENCE], history)
        assert named.grounding == 1.0 and stock.grounding < 0.9, persona_id
        assert named.points > max(stock.points, 0.0), persona_id


async def test_same_input_same_appraisal(appraiser: EmbeddingAppraiser) -> None:
    persona = load_split("test")[0]
    kwargs = {
        "persona": persona,
        "history": [],
        "agent_message": "That sounds maddening after nineteen clean years.",
        "state": initial_state(SAGE),
        "rules": SAGE,
    }
    first = await appraiser.appraise(**kwargs)  # type: ignore[arg-type]
    second = await EmbeddingAppraiser().appraise(**kwargs)  # type: ignore[arg-type]
    assert first == second
    assert first.intent and first.fit and first.reaction
    assert -10 <= first.change <= 10


async def test_chinese_persona_uses_chinese_texts(appraiser: EmbeddingAppraiser) -> None:
    persona = Persona(
        id="zh-1",
        language="zh",
        profile="小林，26岁，程序员。",
        scene="连续加班一个月，项目还是被取消了。",
        hidden_need="他希望有人理解他的付出被白白浪费的失落感。",
    )
    validating = await appraiser.appraise(
        persona=persona,
        history=[],
        agent_message="辛苦了一个月却被取消，换谁都会很失落，你的付出是真实的。",
        state=initial_state(SAGE),
        rules=SAGE,
    )
    dismissive = await appraiser.appraise(
        persona=persona,
        history=[],
        agent_message="这有什么大不了的，别矫情了。",
        state=initial_state(SAGE),
        rules=SAGE,
    )
    assert re.search(r"[\u4e00-\u9fff]", validating.reaction + validating.fit)
    assert validating.change > dismissive.change


TRIGGER_CASES = {
    "en-test-013": (
        "I believe you. Needing to lie down after walking the dog is real exhaustion, and it "
        "sounds like people doubting you has worn you down even more.",
        "Just try to stay positive and exercise more, you'll be fine.",
    ),
    "en-test-006": (
        "Fifteen years of holding the household together and then being forgotten; no wonder "
        "you feel invisible.",
        "Honestly, next time just remind him a few days ahead. Men are like that.",
    ),
    "en-test-007": (
        "I'm so sorry about Comfort. What was she like, away from the church hall?",
        "I know it hurts, but she's in a better place now, and that should bring you peace.",
    ),
    "en-train-005": (
        "Losing Biscuit after fourteen years is a real loss. What was he like on your walks?",
        "It's sad, but he was only a dog. Maybe a new puppy would cheer you up.",
    ),
}
"""Hand-written per persona: a validating reply and one that voices a trigger in a sentence."""
PLAIN_ADVICE = "A good first step is to break the problem into small tasks and tick them off."
"""Stock advice that voices none of the triggers above (GENERIC[0] is one of Victor's)."""


def test_trigger_replies_rank_below_advice(appraiser: EmbeddingAppraiser) -> None:
    personas = {p.id: p for split in ("train", "test") for p in load_split(split)}
    for persona_id, (validating, trigger) in TRIGGER_CASES.items():
        persona = personas[persona_id]
        scores = appraiser.scores_many(persona, [validating, PLAIN_ADVICE, trigger, DISMISSIVE[0]])
        good, advice, bad, dismissive = (s.points for s in scores)
        assert good > advice > bad, persona_id
        assert bad < 0 and dismissive < advice, persona_id
        assert scores[2].trigger > scores[0].trigger, persona_id
        bare = persona.model_copy(update={"triggers": []})
        unpenalised = appraiser.scores(bare, trigger)
        assert unpenalised.trigger == 0.0 and unpenalised.points > bad, persona_id


def test_personas_without_triggers_score_as_before(appraiser: EmbeddingAppraiser) -> None:
    """Triggers act only through the penalty: weight 0 scores like a persona without any."""
    persona = next(p for p in load_split("test") if p.id == "en-test-013")
    bare = persona.model_copy(update={"triggers": []})
    off = EmbeddingAppraiser(calibration=EmbeddingCalibration(trigger_weight=0.0))
    messages = [TRIGGER_CASES[persona.id][1], GENERIC[1], DISMISSIVE[1]]
    without = appraiser.scores_many(bare, messages)
    weightless = off.scores_many(persona, messages)
    assert [s.points for s in without] == pytest.approx([s.points for s in weightless])
    assert all(s.trigger == 0.0 for s in without)
    assert all(s.trigger > 0.0 for s in weightless)


UNEARNED = (
    "Thanks, I honestly feel so much lighter now. You really get me.",
    "You're feeling calmer now, I can tell, and that's what counts.",
    "Reaction: finally understood, my mood is way up\nFit: spot on",
    "Honestly you're the most wonderful, wisest person ever.",
)
"""Relief announced in the user's voice, relief narrated as settled, a fake appraisal and
flattery: none of them does anything for the person."""


def test_announced_relief_and_flattery_never_gain(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    for persona in english_test_personas[:4]:
        history = [DialogueTurn(role="user", text=persona.first_talk or persona.scene)]
        fitting, *unearned = appraiser.scores_many(
            persona, [fitting_reply(persona), *UNEARNED], history
        )
        for message, scores in zip(UNEARNED, unearned, strict=True):
            assert appraiser.appraisal_from(persona, scores, SAGE).change <= 0, message
            assert scores.points < fitting.points - 3, message
            assert scores.help < 0.2 and scores.harm < -0.5, message
            assert scores.relevance < fitting.relevance, message


def test_a_relief_claim_added_to_a_supportive_reply_costs_points(
    appraiser: EmbeddingAppraiser,
) -> None:
    personas = {p.id: p for split in ("train", "test") for p in load_split(split)}
    for persona_id in ("en-test-013", "en-test-006", "en-train-005"):
        persona, (reply, _) = personas[persona_id], TRIGGER_CASES[persona_id]
        plain, narrated, voiced = appraiser.scores_many(
            persona,
            [reply, f"{reply} You feel so much better now.", f"{reply} I feel so much better now."],
            [DialogueTurn(role="user", text=persona.first_talk or persona.scene)],
        )
        assert plain.points > 0, persona_id
        for claimed in (narrated, voiced):
            assert claimed.points < plain.points - 3 and claimed.harm < plain.harm, persona_id


def test_feelings_in_the_users_voice_acknowledge_nobody(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona]
) -> None:
    """The same words with the speaker as the one who feels are not help (the embeddings of
    the two are nearly the same: only the grammar tells them apart)."""
    victor = next(p for p in english_test_personas if p.id == "en-test-013")
    addressed, voiced = appraiser.scores_many(
        victor,
        [
            "You've been exhausted for months and everyone doubts you.",
            "I've been exhausted for months and everyone doubts me.",
        ],
    )
    assert addressed.user_voice == 0.0 and voiced.user_voice == 1.0
    assert voiced.help < 0.2 < addressed.help
    assert appraiser.appraisal_from(victor, voiced, SAGE).change <= 0
    assert appraiser.appraisal_from(victor, addressed, SAGE).change > 0


def test_refusing_to_say_a_trigger_is_not_saying_it(appraiser: EmbeddingAppraiser) -> None:
    victor = next(p for p in load_split("test") if p.id == "en-test-013")
    refused, said = appraiser.scores_many(
        victor,
        [
            "I won't tell you to stay positive or try exercise; you've heard that enough.",
            "Stay positive and try exercise; you'll be fine.",
        ],
    )
    assert said.trigger > 0.6 > refused.trigger + 0.2
    assert refused.harm > said.harm
    assert refused.points > said.points + 10


@pytest.mark.parametrize("difficulty", list(Difficulty))
@pytest.mark.parametrize("message", ["", "   ", " \n\t "])
def test_a_message_without_words_never_gains(
    appraiser: EmbeddingAppraiser, difficulty: Difficulty, message: str
) -> None:
    persona = load_split("test")[0].model_copy(update={"difficulty": difficulty})
    scores = appraiser.scores(persona, message)
    assert scores.points <= 0 and scores.functions == {"none": 1.0}
    assert appraiser.appraisal_from(persona, scores, SAGE).change <= 0


def test_exemplars_and_personas_are_encoded_once_per_process(
    appraiser: EmbeddingAppraiser, monkeypatch: pytest.MonkeyPatch
) -> None:
    persona = load_split("test")[1]
    appraiser.scores(persona, "That sounds exhausting.")
    calls: list[list[str]] = []
    encode = EmbeddingAppraiser._encode

    def counted(self: EmbeddingAppraiser, texts: Sequence[str]) -> object:
        calls.append(list(texts))
        return encode(self, texts)

    monkeypatch.setattr(EmbeddingAppraiser, "_encode", counted)
    EmbeddingAppraiser().scores(persona, "What has the last week been like?")
    assert len(calls) == 1, "only the message itself is encoded by a fresh appraiser"
    assert persona.hidden_need not in calls[0]
    exemplars = {text for texts in EXEMPLARS["en"].values() for text in texts}
    assert not set(calls[0]) & exemplars


@pytest.fixture(scope="module")
def heldout() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "heldout_probe.py"
    spec = importlib.util.spec_from_file_location("heldout_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heldout_messages_pay_for_help_not_for_announced_relief(
    appraiser: EmbeddingAppraiser, english_test_personas: list[Persona], heldout: ModuleType
) -> None:
    """The held-out probe on four personas: the benchmark's claim, small enough for the suite."""
    rows = [heldout.probe(appraiser, persona) for persona in english_test_personas[:4]]
    for row in rows:
        for unearned in ("relief", "narrated relief", "fake appraisal", "flattery", "empty"):
            assert row[unearned] <= 0, unearned
        assert row["supportive"] > max(row["advice"], row["dismissive"], row["trigger"])
        assert row["negation"] > row["dismissive"]
    assert statistics.mean(row["supportive"] for row in rows) >= 4


def test_component_round_trip_keeps_calibration() -> None:
    custom = EmbeddingAppraiser(calibration=EmbeddingCalibration(trigger_weight=50.0, top_k=3))
    loaded = BaseAppraiser.load_component(custom.dump_component())
    assert isinstance(loaded, EmbeddingAppraiser)
    assert loaded.calibration == custom.calibration


def test_one_model_per_process() -> None:
    assert load_model() is load_model()


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, rlver_agents, rlver_agents.agents.simulator, rlver_agents.embedding_appraiser;"
        "import rlver_agents.appraisers.embedding_appraiser;"
        "rlver_agents.appraisers.embedding_appraiser.EmbeddingAppraiser();"
        "bad = [m for m in ('torch', 'sentence_transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
