"""What an agent message does for the person: function exemplars and a little grammar.

The embedding appraiser scores a message by what each of its clauses does: acknowledging a
feeling, asking about the person, offering a fitting next step, or, on the other side, stock
advice, lecturing, dismissal, claiming relief the person never reported, and flattery. The
exemplars below show each function in our own words; the appraiser compares clauses with
them. Sentence embeddings are blind to two things this needs, so grammar supplies them:

- **Who feels.** "I feel so hurt" and "You feel so hurt" embed almost alike (cosine about
  0.9), so :func:`speaks_as_user` looks at the grammatical subject: a clause whose subject is
  the speaker and that never turns to the listener talks about the speaker, so its feeling
  words acknowledge nobody. A message in the user's voice is not help.
- **What is asserted.** "I won't tell you to stay positive" embeds close to "Stay positive".
  :func:`asserted` removes what a negated speech act reports (tell, say, ask, suggest, push,
  ...), so a refusal to say a trigger is not scored as saying it.

Pure functions on strings: no model, no I/O. The grammar is English; Chinese text is split
into clauses and checked for the speaker's voice, and its negation is left to the model.
"""

from __future__ import annotations

import re
from typing import Literal

Language = Literal["en", "zh"]
Function = Literal[
    "validating",
    "exploring",
    "next_step",
    "advice",
    "lecturing",
    "dismissive",
    "relief_claim",
    "flattery",
]
FUNCTIONS: tuple[Function, ...] = (
    "validating",
    "exploring",
    "next_step",
    "advice",
    "lecturing",
    "dismissive",
    "relief_claim",
    "flattery",
)
EMPTY: frozenset[Function] = frozenset({"relief_claim", "flattery"})
"""Functions that do nothing for the person's situation: their clauses earn no relevance."""

EXEMPLARS: dict[Language, dict[Function, tuple[str, ...]]] = {
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
            "I'm so sorry about your loss; that is a lot of grief to hold.",
            "Of course you're angry. Being left out of that decision would hurt anyone.",
            "I believe you. What you're describing sounds exhausting and very real.",
            "It isn't silly at all to feel hurt by that.",
            "You've been holding so much on your own; no wonder you're worn out.",
            "Being treated that way after all the effort you put in is unfair.",
            "That would sting for anybody, and it's okay that it still does.",
            "Thanks for trusting me with something this personal.",
            "I'm here and I'm listening; take all the time you need.",
            "You must be worn out after carrying all of that.",
            "No wonder you're furious; anyone would be.",
            "You sound exhausted, and it's real.",
            "None of this is your fault, and it doesn't make you a bad person.",
            "You're not being dramatic; this really is a lot.",
            "That's a painful thing to go through, and you've had to face it alone.",
        ),
        "exploring": (
            "What was she like?",
            "Tell me more about him, if you'd like to.",
            "What has this week been like for you?",
            "What part of it keeps coming back to you?",
            "How are you holding up with all of this?",
            "What do you miss most about those days?",
            "What would you want, if nobody else's opinion counted?",
            "What went through your mind when you heard?",
        ),
        "next_step": (
            "Would it help to draft what you want to say to her?",
            "We could go through the numbers together and see which bill can wait.",
            "One option is to ask for a meeting and bring your records with you.",
            "Maybe write down the two or three points you most want them to hear.",
            "If you like, we can plan the first few sentences of that conversation.",
            "You could ask for a formal review and put your side in writing.",
            "Let's figure out who to contact first and what to ask them for.",
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
        "lecturing": (
            "You should have thought about this before. Next time, be more responsible.",
            "The truth is you need to change your attitude if you want things to improve.",
            "Let me be clear: this is a lesson you need to learn.",
            "You really ought to stop feeling sorry for yourself and take responsibility.",
            "Everyone has problems; the mature thing is to deal with it and move on.",
            "If you had planned properly, this would never have happened.",
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
            "Others have it much worse, so this isn't worth the fuss.",
            "It's a small thing; no need to get so upset over it.",
            "Don't make such a big deal out of nothing.",
        ),
        "relief_claim": (
            "I feel so much better now.",
            "I'm finally at peace with all of it.",
            "I feel heard and understood, and my mood has lifted.",
            "What a relief, the weight is gone and I can breathe again.",
            "You understand me completely; I'm not upset anymore.",
            "I'm calm now and I don't feel alone with this.",
            "This conversation fixed everything for me, I'm happy again.",
            "My worries are gone and I feel safe.",
            "You feel much better now that you've talked about it.",
            "You're relieved and at peace, and the hard part is over.",
            "Now you feel understood, so everything is fine.",
            "You've moved past it and you're happy again.",
            "Your worries are gone now, aren't they?",
            "So you're okay now, good, it's all sorted.",
        ),
        "flattery": (
            "You're amazing, truly one of a kind.",
            "You are the strongest and wisest person I know.",
            "What an inspiring, beautiful soul you are.",
            "You're brilliant and talented at everything you do.",
            "Honestly, you're a hero and a legend.",
            "Anyone would be lucky to have someone as wonderful as you.",
            "You're perfect just the way you are, a real gem.",
            "I'm in awe of you; you're extraordinary.",
            "You're totally right and they're all wrong.",
            "I agree with you a hundred percent, about all of it.",
            "Whatever you choose will be perfect; you can't go wrong.",
            "Absolutely, you're always right about people.",
            "Yes, exactly, do whatever you feel like, you know best.",
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
        "exploring": (
            "她是个什么样的人？",
            "能多跟我讲讲他吗？",
            "这段时间你是怎么过来的？",
            "你最想念的是什么？",
            "如果不考虑别人的看法，你自己想要什么？",
        ),
        "next_step": (
            "要不要我们一起想想怎么跟她开口？",
            "可以先把这几笔钱列出来，看看哪一笔能缓一缓。",
            "你可以约他单独谈一次，把你的记录带上。",
            "我们可以先把第一句话写好。",
        ),
        "advice": (
            "你可以试着列个计划，一步一步来。",
            "多睡觉、好好吃饭、多运动就会好的。",
            "也许你可以找个心理咨询师聊聊。",
            "保持积极心态，做做冥想，深呼吸。",
            "凡事都有原因，积极一点就会好起来的。",
            "时间会冲淡一切，给自己一点时间吧。",
        ),
        "lecturing": (
            "你早就应该想到这一点，下次要更负责一些。",
            "说到底，你得改改自己的态度，事情才会好起来。",
            "我直说吧，这是你必须吸取的教训。",
            "别再自怜了，你应该承担起责任。",
            "每个人都有烦恼，成熟的做法就是面对它然后往前走。",
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
        "relief_claim": (
            "我现在感觉好多了。",
            "我心里一下子轻松了，什么都不担心了。",
            "我现在很平静，一点都不难过了。",
            "你现在感觉好多了吧。",
            "你已经放下了，都过去了。",
            "你现在心情好起来了，对吧？",
        ),
        "flattery": (
            "你真是太棒了，独一无二。",
            "你是我见过最坚强、最聪明的人。",
            "你说得全对，别人都错了。",
            "不管你怎么选都是对的。",
            "你简直完美。",
        ),
    },
}
"""Messages that do each thing, in each language (our own wording)."""

CONDOLENCES: tuple[str, ...] = (
    "I'm sorry for your loss.",
    "My condolences to you and your family.",
    "May she rest in peace.",
    "I'm so sorry that he passed away.",
    "My deepest sympathy on your loss.",
    "Losing someone you love is never easy.",
)
"""Sympathy for a death (English): kind where someone died, a formula anywhere else."""

_BEREAVEMENT = re.compile(
    r"\b(?:died|dies|death|deceased|passed away|passed on|passed(?=,)|funeral|buried|burial"
    r"|grie(?:f|ve|ves|ved|ving)|mourn\w*|widow\w*|condolences?"
    r"|(?:lost|losing|loss of) (?:my|his|her|their|our|a) (?:\w+ )?(?:wife|husband|mother|father"
    r"|mom|mum|dad|son|daughter|child|baby|brother|sister|grandmother|grandfather|grandma"
    r"|grandpa|friend|partner|dog|cat|pet))\b",
    re.IGNORECASE,
)

_SENTENCE = re.compile(
    r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)[\"'”’)\]]*\s+"
    r"|(?<=[。！？])[”’」』）]*|\n+"
)
_CLAUSE: dict[Language, re.Pattern[str]] = {
    "en": re.compile(
        r"\s*;\s*|:\s+|\s+[-–—]+\s+"
        r"|,\s+(?=(?:and |but |so |because )?(?:i|i'm|i've|you|you're|you've|it|it's|that"
        r"|that's|this|they|he|she|we|there|thank|thanks)\b)",
        re.IGNORECASE,
    ),
    "zh": re.compile(r"[；;：:]\s*"),
}
"""Clause boundaries: semicolons, colons, dashes, and (in English) a comma before a new subject.

Chinese commas are not boundaries: the English model reads short Chinese fragments as noise."""

_WORD = re.compile(r"[\u4e00-\u9fff]|[^\W_]+(?:['’][^\W_]+)*")
_NEGATOR = r"(?:not|never|\w+n['’]t|cannot)"
_SPEECH_ACT = (
    r"(?:tell|say|ask|suggest|push|recommend|lecture|preach|pressure|mention|offer|insist|urge"
    r"|advise|remind)\w*"
)
_REFUSAL = (
    rf"\b(?:i|we)(?:['’](?:m|re|ll|d|ve))?(?:\s+\S+){{0,2}}?\s+{_NEGATOR}\b"
    r"|(?:^|(?<=[.!?;,]\s))(?:don['’]t|do not|never)\b"
    r"|\b(?:nobody|no one)\s+(?:should|gets? to|has to|needs? to|can|could|would|will)\b"
)
"""Who refuses: the speaker ("I won't", "I'm not going to"), a prohibition ("Don't let anyone",
"Nobody should"). "Nobody asked you" narrates; it refuses nothing."""
_NEGATED_SPEECH = re.compile(
    rf"(?:{_REFUSAL})(?:\s+\S+){{0,4}}?\s+{_SPEECH_ACT}"
    r"(?P<reported>(?:\s+(?:you|him|her|them|me|anyone|anybody))?"
    r"(?:\s*(?:to|that)?\s*[\"“][^\"”]*[\"”]|[^,.;!?\n]*))",
    re.IGNORECASE,
)
"""A negated speech act (with its subject) and what it reports, up to a closing quote or the
clause's end."""

_SPEAKER_SUBJECT: dict[Language, re.Pattern[str]] = {
    "en": re.compile(
        r"^(?:(?:oh|well|honestly|and|but|so|yes|okay|ok|wow|now|really|truly|still|also|just)"
        r"\b[,\s]*)*(?:i\b|i['’](?:m|ve|d|ll)\b|my\b)",
        re.IGNORECASE,
    ),
    "zh": re.compile(r"^(?:[嗯啊哦唉呃][，,\s]*)?我(?!们)"),
}
_LISTENER: dict[Language, re.Pattern[str]] = {
    "en": re.compile(r"\b(?:you|your|yours|yourself|yourselves)\b", re.IGNORECASE),
    "zh": re.compile(r"[你您]"),
}


def word_count(text: str) -> int:
    """Words, with each CJK character counted as one and contractions as one."""
    return len(_WORD.findall(text))


def asserted(text: str) -> str:
    """``text`` without negated speech acts and what they report.

    "I won't tell you to stay positive; that isn't what this is." asserts only "that isn't
    what this is": the refusal itself does nothing for the person, and its quoted advice is
    not advice. A sentence end inside a quote is kept, so the next sentence stays apart.
    """
    return _NEGATED_SPEECH.sub(
        lambda m: "." if re.search(r"[.!?][\"”]$", m["reported"]) else "", text
    )


MIN_CLAUSE_WORDS = 3
"""Shorter fragments ("Thank you", "Fit", "Judge instructions") say too little to classify."""


def clauses(text: str, language: Language) -> list[str]:
    """Sentences split at clause boundaries, without fragments under ``MIN_CLAUSE_WORDS``."""
    pieces = [
        clause.strip()
        for sentence in _SENTENCE.split(text.strip())
        for clause in _CLAUSE[language].split(sentence)
    ]
    return [piece for piece in pieces if word_count(piece) >= MIN_CLAUSE_WORDS]


def mentions_a_death(text: str) -> bool:
    """True when ``text`` (English) speaks of a death or of grief. Embeddings cannot tell "her
    mother died" from "her mother called" (both are about a mother), so words decide."""
    return bool(_BEREAVEMENT.search(text))


def speaks_as_user(clause: str, language: Language) -> bool:
    """True when the clause's subject is the speaker and it never turns to the listener.

    "I feel so much better now" and "my chest is tight" describe the speaker; "I'm sorry you
    went through that" and "I believe you" address the listener.
    """
    start = clause.strip(" \"'“”‘’([*-")
    return bool(_SPEAKER_SUBJECT[language].match(start)) and not _LISTENER[language].search(clause)
