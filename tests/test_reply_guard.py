"""The reply guard: its thresholds, who gets it, and how its interventions show in the record."""

from __future__ import annotations

from pathlib import Path

import pytest
from autogen_ext.models.replay import ReplayChatCompletionClient
from pydantic import ValidationError

from rlver_agents.agents.reply_guard import ReplyGuard, stock_reply
from rlver_agents.agents.simulator import SimulatedUser
from rlver_agents.appraisers.appraisal import LLMAppraiser
from rlver_agents.builders import ClientPool, episode_config, user_factory
from rlver_agents.config import RunConfig, SimulatorSettings
from rlver_agents.emotion import SAGE, EmotionRules
from rlver_agents.episodes.episode import Episode, EpisodeContext, run_episode
from rlver_agents.evaluation.benchmark import sentient_benchmark
from rlver_agents.evaluation.report import write_report
from rlver_agents.models.spec import ModelSpec
from rlver_agents.personas import Persona
from rlver_agents.repetition import AGENT_ECHO_THRESHOLD, USER_COPY_THRESHOLD

PERSONA = Persona(
    id="guard-1",
    name="Mira",
    profile="Mira is a 29-year-old line cook.",
    scene="Her head chef mocked her plating in front of the new hires.",
    hidden_need="She wants to hear that being mocked in public was unfair, not advice.",
    first_talk="My chef laughed at my plates in front of the new hires today.",
)
SERVED = ModelSpec(kind="openai", model="sim", base_url="http://127.0.0.1:9/v1")


def test_thresholds_are_named_once_and_validated() -> None:
    guard = ReplyGuard()
    assert (guard.max_sentences, guard.copy_threshold, guard.retries) == (3, 0.5, 1)
    assert guard.copy_threshold == USER_COPY_THRESHOLD < AGENT_ECHO_THRESHOLD
    with pytest.raises(ValidationError):
        ReplyGuard(copy_threshold=0)
    with pytest.raises(ValidationError):
        ReplyGuard(max_sentences=0)
    with pytest.raises(ValidationError):
        ReplyGuard(trim=True)  # type: ignore[call-arg]


def test_trim_keeps_the_first_sentences_in_both_languages() -> None:
    guard = ReplyGuard(max_sentences=2)
    assert guard.trim("One. Two! Three? Four.") == "One. Two!"
    assert guard.trim("One. Two.") == "One. Two."
    assert guard.trim("我很累。真的很累！你懂吗？算了。") == "我很累。真的很累！"
    assert guard.trim("no punctuation at all") == "no punctuation at all"


def test_copied_uses_the_guard_threshold() -> None:
    earlier = ["My chef laughed at my plates in front of the new hires today."]
    half = "My chef laughed at my plates in front of everyone and I hated it."
    assert ReplyGuard().copied(half, earlier) == earlier[0]
    assert ReplyGuard(copy_threshold=0.9).copied(half, earlier) is None


@pytest.mark.parametrize(
    ("setting", "kind", "expected"),
    [(None, "embedded", True), (None, "openai", False), (True, "openai", True),
     (False, "embedded", False), (None, "local", False)],
)  # fmt: skip
def test_guard_is_on_for_the_embedded_model_unless_configured(
    setting: bool | None, kind: str, expected: bool
) -> None:
    spec = {"embedded": ModelSpec(), "openai": SERVED, "local": ModelSpec(kind="local", model="x")}
    settings = SimulatorSettings(model=spec[kind], reply_guard=setting)
    assert settings.guarded() is expected


@pytest.mark.parametrize("setting", [None, True])
async def test_builders_give_served_simulators_a_guard_only_when_asked(
    setting: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    run = RunConfig.model_validate(
        {
            "simulator": {
                "model": SERVED.model_dump(),
                "appraiser": {"kind": "llm"},
                "reply_guard": setting,
            }
        }
    )
    pool = ClientPool()
    user = user_factory(run, pool)(EpisodeContext(persona=PERSONA, rules=SAGE))
    assert isinstance(user, SimulatedUser) and isinstance(user.appraiser, LLMAppraiser)
    assert user.reply_guard == (ReplyGuard() if setting else None)
    assert episode_config(run).simulator["reply_guard"] is bool(setting)
    await pool.close()


# --- the record --------------------------------------------------------------------------------

JUDGE = "Intent: x\nFit: y\nReaction: z\nChange: -2"
AGENT_LINE = "It sounds like your chef laughed at your plates in front of everyone today."


def _user_factory(voice: list[str], guard: ReplyGuard | None) -> object:
    def build(context: EpisodeContext) -> SimulatedUser:
        return SimulatedUser(
            "user",
            ReplayChatCompletionClient(list(voice)),
            context.persona,
            rules=context.rules,
            appraiser=LLMAppraiser(ReplayChatCompletionClient([JUDGE] * 4)),
            reply_guard=guard,
        )

    return build


def _agent_factory(context: EpisodeContext) -> object:
    from autogen_agentchat.agents import AssistantAgent

    return AssistantAgent("agent", ReplayChatCompletionClient([AGENT_LINE] * 4))


async def _campaign(voice: list[str], guard: ReplyGuard | None) -> Episode:
    return await run_episode(
        PERSONA,
        user_factory=_user_factory(voice, guard),  # type: ignore[arg-type]
        agent_factory=_agent_factory,  # type: ignore[arg-type]
        rules=EmotionRules(max_turns=2),
    )


async def test_guarded_turns_record_retries_and_stock_lines() -> None:
    voice = [
        AGENT_LINE,  # parrots the agent: rewritten
        "Yeah. It stung more than I let on.",  # the rewrite: model_retry
        AGENT_LINE,  # parrots again
        f"  {AGENT_LINE.upper()}",  # and again: a stock line stands in
    ]
    episode = await _campaign(voice, ReplyGuard())
    assert episode.ok, episode.error
    users = [turn for turn in episode.turns if turn.speaker == "user"]
    assert [turn.reply_origin for turn in users] == ["persona", "model_retry", "stock"]
    assert users[1].text == "Yeah. It stung more than I let on."
    heard = [PERSONA.first_talk or "", AGENT_LINE, users[1].text, AGENT_LINE]
    assert users[2].text == stock_reply("C", "en", heard)
    assert all(turn.reply_origin is None for turn in episode.turns if turn.speaker == "agent")


async def test_unguarded_turns_keep_the_model_line_and_say_so() -> None:
    episode = await _campaign([AGENT_LINE, AGENT_LINE], None)
    users = [turn for turn in episode.turns if turn.speaker == "user"]
    assert [turn.reply_origin for turn in users] == ["persona", "model", "model"]
    assert users[1].text == AGENT_LINE


async def test_a_campaign_report_counts_stock_lines_and_trims(tmp_path: Path) -> None:
    rambling = "Fine. I guess. Whatever. It was just plates. Forget I said it."
    guarded = await _campaign(
        [AGENT_LINE, AGENT_LINE, rambling], ReplyGuard(max_sentences=2, retries=1)
    )
    clean = await _campaign(["Thanks, that helps.", "Maybe I'll talk to him."], None)
    origins = [t.reply_origin for t in guarded.turns if t.speaker == "user"]
    assert origins == ["persona", "stock", "trimmed"]

    report = sentient_benchmark([guarded, clean], SAGE)
    assert (report.user_replies, report.stock_replies, report.trimmed_replies) == (6, 1, 1)
    assert report.retried_replies == 0
    markdown = report.to_markdown()
    assert "| user replies that are stock lines | 1 of 6 |" in markdown
    assert "| user replies trimmed | 1 of 6 |" in markdown

    path = write_report({"guarded": [guarded], "clean": [clean]}, tmp_path)
    text = path.read_text(encoding="utf-8")
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["| guarded"].endswith("| 0 | 1 | 1 |"), "errored, stock lines, trimmed"
    assert rows["| clean"].endswith("| 0 | 0 | 0 |")
    assert "| user replies that are stock lines | 1 of 3 |" in text
    assert "| user replies that are stock lines | 0 of 3 |" in text


def test_old_records_without_origins_are_not_counted_as_clean() -> None:
    report = sentient_benchmark([], SAGE)
    assert report.user_replies == 0
    assert "| user replies that are stock lines | n/a (not recorded) |" in report.to_markdown()
