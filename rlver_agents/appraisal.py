"""Compatibility path: ``rlver_agents.appraisal`` is now ``rlver_agents.appraisers.appraisal``.

This module only re-exports it. It stays so that component configs and recorded
``Episode.config`` blocks saved before the regrouping, whose provider strings name
``rlver_agents.appraisal.<Class>``, still load (AutoGen imports the module a provider
names), and so that imports written against the old path keep working. New code imports
``rlver_agents.appraisers``; new configs name it.
"""

from rlver_agents.appraisers.appraisal import (
    DEFUSE_MARK,
    EMPTY_MESSAGE_MAX_CHANGE,
    EMPTY_MESSAGE_NOTE,
    FENCE_CLOSE,
    FENCE_OPEN,
    MAX_JUDGE_MAGNITUDE,
    TRANSCRIPT_CLOSE,
    TRANSCRIPT_OPEN,
    Appraisal,
    AppraisalError,
    AppraisalEvent,
    BaseAppraiser,
    DialogueTurn,
    LLMAppraiser,
    LLMAppraiserConfig,
    build_appraisal_messages,
    capped_for_empty,
    neutralise,
    parse_appraisal,
    render_transcript,
    shown_text,
)

__all__ = [
    "DEFUSE_MARK",
    "EMPTY_MESSAGE_MAX_CHANGE",
    "EMPTY_MESSAGE_NOTE",
    "FENCE_CLOSE",
    "FENCE_OPEN",
    "MAX_JUDGE_MAGNITUDE",
    "TRANSCRIPT_CLOSE",
    "TRANSCRIPT_OPEN",
    "Appraisal",
    "AppraisalError",
    "AppraisalEvent",
    "BaseAppraiser",
    "DialogueTurn",
    "LLMAppraiser",
    "LLMAppraiserConfig",
    "build_appraisal_messages",
    "capped_for_empty",
    "neutralise",
    "parse_appraisal",
    "render_transcript",
    "shown_text",
]
