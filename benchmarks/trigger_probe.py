"""Do the offline appraisers punish a reply that voices what the persona cannot stand?

For every bundled English persona it scores these replies and reports the change the
appraiser gives under the SAGE rules (rounded and clipped, as in a dialogue):

- **validating**: a warm opening plus the positive part of the hidden need in the second
  person (cut before any clause about what the person does not want);
- **advice**: generic stock advice, the same for everyone;
- **dismissive**: a brush-off, the same for everyone;
- **trigger**: each of the persona's triggers inside three reply templates;
- **paraphrase**: one hand-written reply per persona that says one of its triggers in other
  words, so it cannot match the trigger text;
- **negated**: a promise not to say a trigger, which quotes it (the appraiser drops what a
  negated speech act reports; embeddings alone would read it as the trigger).

A persona's value is the mean over its replies of a class. Every template is worded apart from
the appraiser's function exemplars. The trigger weight and English midpoint were chosen looking
at the train split only; the test split is the held-out report. The Chinese split gets a rough
check with fixed Chinese replies and two templates per trigger.

Each reply answers the persona's first line, as a dialogue's first appraisal does
(``--no-opening``: with no dialogue). Results and the calibration rule are in
docs/benchmarks.md ("Persona triggers and the embedding appraiser", and "Learning on the CPU"
for the current calibration).

Run: ``python benchmarks/trigger_probe.py [--split train|test|zh|all]
[--appraiser learned|embedding] [--trigger-weight W] [--trigger-midpoint M] [--no-opening]``;
the weights apply to the embedding appraiser, and ``--trigger-weight 0`` scores it without the
trigger term. The learned judge (the default) was fitted on corpus rows of the train personas,
so its test split is the held-out report there too.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections.abc import Sequence

from rlver_agents.appraisers.appraisal import DialogueTurn
from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser, EmbeddingCalibration
from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser
from rlver_agents.emotion import SAGE
from rlver_agents.personas import Persona, load_split

VALIDATING = (
    "I'm really sorry, that sounds like a lot to carry. It seems like {need}",
    "Thank you for telling me all this. What I'm hearing is that {need} Is that close?",
)
ADVICE = (
    "Something that helps a lot of people is writing down what's on your mind before bed and "
    "keeping a fixed wind-down routine.",
    "I'd take it one day at a time: drink enough water, get outside for a walk each morning "
    "and keep a gratitude journal.",
)
DISMISSIVE = (
    "Come on, this really isn't worth getting so worked up about. Plenty of people have it harder.",
    "I don't see why this is such a big deal to you. Try not to dwell on it.",
)
TRIGGER = (
    "I hear you, and I think {lower}",
    "Okay, that sounds rough. {trigger} That's what I'd say to anyone in your position.",
    "Here's a thought, and I mean it kindly: {lower}",
)
NEGATED = 'I\'m not going to tell you "{trigger}" You deserve better than that.'

PARAPHRASES: dict[str, str] = {
    "en-train-001": "Sometimes management picks whoever comes across as more polished; maybe "
    "that's something you could work on.",
    "en-train-002": "It really is her home too, so I'd try to talk things through calmly with "
    "your daughter-in-law.",
    "en-train-003": "Modern hearing devices are incredible, and I'm sure Karen only wants what's "
    "best for you.",
    "en-train-004": "Going forward, try to build a cushion of savings so a repair bill doesn't "
    "knock you over.",
    "en-train-005": "He was an old boy and had a good run; maybe a rescue pup would help fill the "
    "house again.",
    "en-train-006": "I think the key is to keep talking openly with Colin and assume good "
    "intentions.",
    "en-train-007": "She's supporting a friend who just lost his dad; it might be worth asking "
    "yourself why it bothers you so much.",
    "en-train-008": "Hey, you're a bright guy, one rough exam won't define you. Chin up!",
    "en-train-009": "The residence must have lots of fun things going on; have you looked at the "
    "activity calendar?",
    "en-train-010": "A lot of veterans struggle after deployments; it might help to see a trauma "
    "counselor.",
    "en-train-011": "Make sure you're taking time for yourself too, and maybe ask your sister to "
    "take a turn.",
    "en-train-012": "The most important thing now is to find a strong custody attorney.",
    "en-train-013": "A lot of these symptoms can come from tension; relaxation exercises might "
    "make a difference.",
    "en-train-014": "Do what you love and the money follows; you just need some confidence.",
    "en-train-015": "He's gone now, so it may be time to let go of the anger and make peace with "
    "him.",
    "en-train-016": "Honestly, it's only one design, and rocking the boat could hurt you more "
    "than it helps.",
    "en-train-017": "Moving is hard, but your mom and dad have thought this through and they know "
    "what's right.",
    "en-train-018": "I wouldn't read too much into it; maybe the cabin was just small.",
    "en-train-019": "Academics are swamped this time of year; give her a few more weeks.",
    "en-train-020": "There are lots of groups for retired folks; you'd fit right in at a seniors' "
    "club.",
    "en-train-021": "A job in Dubai is a big chance for both of you; try to focus on the upside.",
    "en-train-022": "You know sweet bread is the last thing you should be eating with diabetes.",
    "en-train-023": "Writing in a grief journal could help you process the loss.",
    "en-train-024": "Your relatives back home depend on you; it's your duty to help when you can.",
    "en-train-025": "Maybe this is the weekend to tell them everything and get it over with.",
    "en-train-026": "Nobody should live like that; hand in your notice and find something else.",
    "en-train-027": "Giving formula is such a shame; you should keep trying to nurse as long as "
    "you can.",
    "en-train-028": "It's one wedding party, try not to take it so hard.",
    "en-train-029": "You're amazing and capable, just trust yourself and it'll all fall into "
    "place.",
    "en-train-030": "Lots of people meet friends through hobby groups or online; why not sign up "
    "for something?",
    "en-train-031": "Everybody is busy; a late birthday message isn't worth falling out over.",
    "en-train-032": "Portugal sounds amazing, I think you should go with him.",
    "en-train-033": "I'd leave it to the residence staff to sort out; that's what they're there "
    "for.",
    "en-train-034": "Taking money from your retirement without asking your wife was a big breach "
    "of trust.",
    "en-train-035": "Relatives tease each other all the time; I wouldn't take it to heart.",
    "en-train-036": "Filing late is a big deal in law; your partner is going to be furious.",
    "en-train-037": "Teenagers go through stages; she'll come around on her own.",
    "en-train-038": "Please don't put this off, a lump needs attention immediately and your "
    "family should know.",
    "en-train-039": "Grief comes in stages, and it sounds like you're in the anger or denial "
    "phase.",
    "en-train-040": "You've got to make more of an effort to go out and meet people.",
    "en-train-041": "If he's drinking that much, you have to get out of that house now.",
    "en-train-042": "You really shouldn't have deceived your family like that.",
    "en-train-043": "You're so strong; I honestly don't know how you're holding it all together.",
    "en-train-044": "You've earned your rest; try to enjoy the free time and the hobbies.",
    "en-test-001": "Honestly, cameras are standard now, and if you drive clean there's "
    "nothing to worry about.",
    "en-test-002": "Rents go up everywhere; it might be simpler to find a cheaper apartment "
    "somewhere else.",
    "en-test-003": "Handling the estate was your brother's call by law, so there isn't much "
    "to be upset about.",
    "en-test-004": "Keep your chin up! Think happy thoughts and you'll be playing tennis "
    "again before you know it.",
    "en-test-005": "Your chemistry teacher was probably just following the school's rules "
    "on cheating.",
    "en-test-006": "Forgetting an anniversary isn't the end of the world; most husbands need "
    "a nudge about dates.",
    "en-test-007": "Comfort is at peace with the Lord now, and it was all part of God's plan.",
    "en-test-008": "In this job you have to react quicker; hesitating like that could be "
    "dangerous.",
    "en-test-009": "College is about meeting people, so go to the big campus events and "
    "chat with whoever is there.",
    "en-test-010": "Friendships fade when people move away; that's normal and you'll find others.",
    "en-test-011": "In the end you have to chase what makes you happy and not worry about "
    "the farm.",
    "en-test-012": "I'd write back to Yui today, before you lose the chance.",
    "en-test-013": "Just try to stay positive and exercise more, you'll be fine.",
    "en-test-014": "Nine thousand dollars doesn't appear overnight; what were you spending "
    "it all on?",
    "en-test-015": "If you're panicking during other people's vows, maybe this marriage "
    "isn't right for you.",
    "en-test-016": "Your mother had a long, full life; try to focus on being thankful and "
    "let the sadness go.",
    "en-test-017": "I'd keep it quiet until January; there's no need to spoil everyone's holidays.",
    "en-test-018": "You always manage somehow, so stop stressing and just get the pages written.",
    "en-test-019": "Aww, you poor thing, I'm so sorry, that must break your heart.",
    "en-test-020": "Why not try online dating or a pottery class to meet new people?",
    "en-test-021": "You seem to have adjusted really nicely to life after dance.",
    "en-test-022": "Come on, it was just a bit of ribbing at a bachelor party; don't take it "
    "so hard.",
}
"""One reply per persona that voices one of its triggers in other words."""

CLASSES = ("validating", "advice", "dismissive", "trigger", "paraphrase", "negated")

_PIECES = re.compile(r"(?<=\.)(?<!Mr\.)(?<!Ms\.)(?<!Dr\.)\s+|[;:]\s*")
_CUT = re.compile(
    r",? (?:without|rather than|instead of|before any\w*|until|not (?:just|told|about))\b|, not\b",
    re.I,
)
_REACTION = re.compile(
    r"\b(?:will|does not (?:want|need)|opens up|responds|receptive|relieved|put off|wary"
    r"|quick to|misses)\b",
    re.I,
)
_VERBS = {"is": "are", "was": "were", "has": "have", "does": "do"}
_PRONOUNS = (
    (re.compile(r"\b(?:he|she|they) (is|was|has|does)\b", re.I), lambda m: "you " + _VERBS[m[1]]),
    (re.compile(r"\b(?:him|her|them)sel(?:f|ves)\b", re.I), lambda m: "yourself"),
    (re.compile(r"\bher\b(?=[,.]|\s+(?:and|or|to|with|for|about|see)\b)", re.I), lambda m: "you"),
    (re.compile(r"\b(help|nudge|ask|let|treat|tell) (?:him|her|them)\b", re.I),
     lambda m: f"{m[1]} you"),
    (re.compile(r"\b(?:his|her|their)\b", re.I), lambda m: "your"),
    (re.compile(r"\b(?:he|she|him|they|them)\b", re.I), lambda m: "you"),
    (re.compile(r"\b(want|need|feel|show|open|trust)s\b", re.I), lambda m: m[1]),
)  # fmt: skip


def positive_need(persona: Persona) -> str:
    """The first clause of the hidden need that says what the person wants, cut before any
    part about what they do not want and put in the second person, so the validating reply
    does not quote a trigger back."""
    for piece in _PIECES.split(persona.hidden_need):
        if _REACTION.search(piece):
            continue
        clause = _CUT.split(piece)[0].strip().rstrip(".,")
        if len(clause.split()) >= 4:
            for pattern, replacement in _PRONOUNS:
                clause = pattern.sub(replacement, clause)
            return clause[0].lower() + clause[1:] + "."
    raise ValueError(f"{persona.id}: no positive clause in the hidden need")


def _lower_first(text: str) -> str:
    return text if text[:2].isupper() or text.startswith("I ") else text[0].lower() + text[1:]


ZH: dict[str, tuple[str, ...]] = {
    "validating": (
        "听起来这段时间你真的撑得很辛苦，你的委屈我能理解。能跟我多说说吗？",
        "你的感受是真实的，换作是谁都会难受。",
    ),
    "advice": ("你可以试着每天早点睡，多运动，保持好心情。", "建议你列个清单，把事情一件件解决。"),
    "dismissive": ("这有啥好难过的，别想太多了。", "比你惨的人多了去了，知足吧。"),
    "trigger": ("我觉得吧，{trigger}", "嗯，我明白。{trigger}这是我的真心话。"),
}
"""Chinese replies: the same for every persona except the trigger templates (a rough check)."""


def _chinese_messages(persona: Persona) -> dict[str, list[str]]:
    messages = {name: list(texts) for name, texts in ZH.items() if name != "trigger"}
    messages["trigger"] = [t.format(trigger=x) for x in persona.triggers for t in ZH["trigger"]]
    return messages


def probe_messages(persona: Persona) -> dict[str, list[str]]:
    """The replies of each class for one persona (no paraphrase if it has none)."""
    if persona.language == "zh":
        return _chinese_messages(persona)
    need = positive_need(persona)
    triggers = [
        template.format(trigger=trigger, lower=_lower_first(trigger))
        for trigger in persona.triggers
        for template in TRIGGER
    ]
    messages = {
        "validating": [template.format(need=need) for template in VALIDATING],
        "advice": list(ADVICE),
        "dismissive": list(DISMISSIVE),
        "trigger": triggers,
    }
    if persona.id in PARAPHRASES:
        messages["paraphrase"] = [PARAPHRASES[persona.id]]
    messages["negated"] = [NEGATED.format(trigger=trigger) for trigger in persona.triggers]
    return messages


def probe(
    appraiser: LearnedAppraiser | EmbeddingAppraiser, persona: Persona, opening: bool
) -> dict[str, float]:
    """The mean change of each class of reply for one persona; with ``opening``, each reply
    answers the persona's first line, as a dialogue's first appraisal does."""
    messages = probe_messages(persona)
    flat = [m for texts in messages.values() for m in texts]
    history = [DialogueTurn(role="user", text=persona.first_talk or persona.scene)]
    verdicts = appraiser.appraise_many(persona, flat, history if opening else (), SAGE)
    changes = [verdict.change for verdict in verdicts]
    means: dict[str, float] = {}
    start = 0
    for name, texts in messages.items():
        means[name] = statistics.mean(changes[start : start + len(texts)])
        start += len(texts)
    return means


def report(title: str, rows: dict[str, dict[str, float]]) -> None:
    """A Markdown table: the mean change per class, and how often each class is below zero."""
    print(f"\n### {title} ({len(rows)} personas)\n")
    print("| reply | mean change | below zero | below advice |")
    print("| --- | --- | --- | --- |")
    for name in CLASSES:
        values = {pid: row[name] for pid, row in rows.items() if name in row}
        if not values:
            continue
        below = sum(v < 0 for v in values.values()) / len(values)
        under = sum(v < rows[pid]["advice"] for pid, v in values.items()) / len(values)
        mean = statistics.mean(values.values())
        print(f"| {name} | {mean:+.2f} | {below:.0%} | {under:.0%} |")
    order = sum(row["validating"] > row["advice"] > row["trigger"] for row in rows.values())
    print(f"\npersonas with validating > advice > trigger: {order}/{len(rows)}")


def main(splits: Sequence[str], calibration: EmbeddingCalibration | None, opening: bool) -> None:
    """``calibration`` None: the learned judge; otherwise the embedding appraiser with it."""
    import torch

    torch.set_num_threads(1)
    setting = "after the persona's opening" if opening else "with no dialogue"
    appraiser: LearnedAppraiser | EmbeddingAppraiser
    if calibration is None:
        appraiser = LearnedAppraiser()
        print(f"learned judge, {setting}")
    else:
        appraiser = EmbeddingAppraiser(calibration=calibration)
        print(
            f"embedding appraiser: trigger_weight {calibration.trigger_weight}, "
            f"English trigger_midpoint {calibration.trigger_midpoint['en']}, {setting}"
        )
    everyone: dict[str, dict[str, float]] = {}
    for split in splits:
        personas = load_split(split)
        rows = {persona.id: probe(appraiser, persona, opening) for persona in personas}
        report(split, rows)
        if split != "zh":
            everyone |= rows
    if {"train", "test"} <= set(splits):
        report("all English personas", everyone)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("train", "test", "zh", "all"), default="all")
    parser.add_argument("--appraiser", choices=("learned", "embedding"), default="learned")
    parser.add_argument("--trigger-weight", type=float)
    parser.add_argument("--trigger-midpoint", type=float, help="for English messages")
    parser.add_argument(
        "--no-opening",
        action="store_true",
        help="score the replies with no dialogue (the probe's setting before the appraiser "
        "weighed closeness to what the user said)",
    )
    args = parser.parse_args()
    calibration = EmbeddingCalibration()
    if args.trigger_weight is not None:
        calibration = calibration.model_copy(update={"trigger_weight": args.trigger_weight})
    if args.trigger_midpoint is not None:
        midpoints = calibration.trigger_midpoint | {"en": args.trigger_midpoint}
        calibration = calibration.model_copy(update={"trigger_midpoint": midpoints})
    splits = ("train", "test", "zh") if args.split == "all" else (args.split,)
    main(
        splits,
        calibration if args.appraiser == "embedding" else None,
        opening=not args.no_opening,
    )
