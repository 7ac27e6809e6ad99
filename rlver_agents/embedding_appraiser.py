"""Compatibility path: ``rlver_agents.embedding_appraiser`` is now
``rlver_agents.appraisers.embedding_appraiser``.

This module only re-exports it. It stays so that component configs and recorded
``Episode.config`` blocks saved before the regrouping, whose provider strings name
``rlver_agents.embedding_appraiser.<Class>``, still load (AutoGen imports the module a provider
names), and so that imports written against the old path keep working. New code imports
``rlver_agents.appraisers``; new configs name it.
"""

from rlver_agents.appraisers.embedding_appraiser import (
    EmbeddingAppraiser,
    EmbeddingAppraiserConfig,
    EmbeddingCalibration,
    EmbeddingScores,
    Reading,
    bundled_model_path,
    load_model,
)

__all__ = [
    "EmbeddingAppraiser",
    "EmbeddingAppraiserConfig",
    "EmbeddingCalibration",
    "EmbeddingScores",
    "Reading",
    "bundled_model_path",
    "load_model",
]
