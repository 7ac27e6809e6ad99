"""Compatibility path: ``rlver_agents.reply_guard`` is now ``rlver_agents.agents.reply_guard``.

This module only re-exports it. It stays so that component configs and recorded
``Episode.config`` blocks saved before the regrouping, whose provider strings name
``rlver_agents.reply_guard.<Class>``, still load (AutoGen imports the module a provider
names), and so that imports written against the old path keep working. New code imports
``rlver_agents.agents``; new configs name it.
"""

from rlver_agents.agents.reply_guard import (
    REPLY_ORIGIN_KEY,
    UNGUARDED_RETRIES,
    ReplyGuard,
    ReplyOrigin,
    stock_reply,
)

__all__ = [
    "REPLY_ORIGIN_KEY",
    "UNGUARDED_RETRIES",
    "ReplyGuard",
    "ReplyOrigin",
    "stock_reply",
]
