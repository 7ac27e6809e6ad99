"""How a simulated user appraises an agent message: the one contract (``BaseAppraiser``,
``Appraisal``, ``AppraisalEvent``), the strict judge reader and ``LLMAppraiser``, and the offline
``EmbeddingAppraiser`` (sentence-transformers loads only when it is first used).

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
    "build_appraisal_messages",
]
