"""The dialogue's two sides as AutoGen agents: the simulated user (and the termination and
team that go with it), the empathetic agent, and the simulated user's reply guard.

Provider strings name this package (``rlver_agents.agents.SimulatedUser``); the classes live
in its modules.
"""

from rlver_agents.agents.agent import (
    EmpatheticAgent,
    EmpatheticAgentConfig,
    default_system_message,
)
from rlver_agents.agents.reply_guard import (
    ReplyGuard,
    ReplyOrigin,
    stock_reply,
)
from rlver_agents.agents.simulator import (
    EmotionTermination,
    EmotionTerminationConfig,
    EmptyReplyError,
    SimulatedUser,
    SimulatedUserConfig,
    dialogue_team,
)

__all__ = [
    "EmotionTermination",
    "EmotionTerminationConfig",
    "EmpatheticAgent",
    "EmpatheticAgentConfig",
    "EmptyReplyError",
    "ReplyGuard",
    "ReplyOrigin",
    "SimulatedUser",
    "SimulatedUserConfig",
    "default_system_message",
    "dialogue_team",
    "stock_reply",
]
