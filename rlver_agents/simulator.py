"""Compatibility path: ``rlver_agents.simulator`` is now ``rlver_agents.agents.simulator``.

This module only re-exports it. It stays so that component configs and recorded
``Episode.config`` blocks saved before the regrouping, whose provider strings name
``rlver_agents.simulator.<Class>``, still load (AutoGen imports the module a provider
names), and so that imports written against the old path keep working. New code imports
``rlver_agents.agents``; new configs name it.
"""

from rlver_agents.agents.simulator import (
    DEFAULT_DESCRIPTION,
    EmotionTermination,
    EmotionTerminationConfig,
    EmptyReplyError,
    SimulatedUser,
    SimulatedUserConfig,
    SimulatedUserState,
    dialogue_team,
)

__all__ = [
    "DEFAULT_DESCRIPTION",
    "EmotionTermination",
    "EmotionTerminationConfig",
    "EmptyReplyError",
    "SimulatedUser",
    "SimulatedUserConfig",
    "SimulatedUserState",
    "dialogue_team",
]
