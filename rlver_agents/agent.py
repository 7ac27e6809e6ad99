"""Compatibility path: ``rlver_agents.agent`` is now ``rlver_agents.agents.agent``.

This module only re-exports it. It stays so that component configs and recorded
``Episode.config`` blocks saved before the regrouping, whose provider strings name
``rlver_agents.agent.<Class>``, still load (AutoGen imports the module a provider
names), and so that imports written against the old path keep working. New code imports
``rlver_agents.agents``; new configs name it.
"""

from rlver_agents.agents.agent import (
    DEFAULT_DESCRIPTION,
    FORMAT_VIOLATION_KEY,
    EmpatheticAgent,
    EmpatheticAgentConfig,
    default_system_message,
    fallback_reply,
)

__all__ = [
    "DEFAULT_DESCRIPTION",
    "FORMAT_VIOLATION_KEY",
    "EmpatheticAgent",
    "EmpatheticAgentConfig",
    "default_system_message",
    "fallback_reply",
]
