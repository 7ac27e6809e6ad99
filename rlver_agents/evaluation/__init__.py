"""Scoring recorded episodes: rewards, the Sentient benchmark, the SAGE importer and replay,
and Markdown/PNG reports.
"""

from rlver_agents.evaluation.benchmark import (
    BenchmarkReport,
    sentient_benchmark,
)
from rlver_agents.evaluation.report import (
    write_report,
)
from rlver_agents.evaluation.rewards import (
    DEFAULT_FORMAT_PENALTY,
    EpisodeRewards,
    episode_rewards,
    outcome_reward,
)
from rlver_agents.evaluation.sage import (
    sage_benchmark,
    score_sage_file,
)

__all__ = [
    "DEFAULT_FORMAT_PENALTY",
    "BenchmarkReport",
    "EpisodeRewards",
    "episode_rewards",
    "outcome_reward",
    "sage_benchmark",
    "score_sage_file",
    "sentient_benchmark",
    "write_report",
]
