"""How a simulated user appraises an agent message: the one contract (``BaseAppraiser``,
``Appraisal``, ``AppraisalEvent``), the strict judge reader and ``LLMAppraiser``; the offline
default ``LearnedAppraiser`` (a cross-encoder fitted on the graded corpus of :mod:`.corpus`) and
the older ``EmbeddingAppraiser``, kept as a second opinion. Their models load when first used.

Provider strings name this package (``rlver_agents.appraisers.LLMAppraiser``); the classes live
in its modules.
"""

from rlver_agents.appraisers.appraisal import (
    Appraisal,
    AppraisalError,
    AppraisalEvent,
    BaseAppraiser,
    DialogueTurn,
    LLMAppraiser,
    LLMAppraiserConfig,
    build_appraisal_messages,
)
from rlver_agents.appraisers.embedding_appraiser import (
    EmbeddingAppraiser,
    EmbeddingAppraiserConfig,
    EmbeddingCalibration,
)
from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser, LearnedAppraiserConfig

__all__ = [
    "Appraisal",
    "AppraisalError",
    "AppraisalEvent",
    "BaseAppraiser",
    "DialogueTurn",
    "EmbeddingAppraiser",
    "EmbeddingAppraiserConfig",
    "EmbeddingCalibration",
    "LLMAppraiser",
    "LLMAppraiserConfig",
    "LearnedAppraiser",
    "LearnedAppraiserConfig",
    "build_appraisal_messages",
]
