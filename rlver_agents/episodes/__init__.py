"""Recorded dialogues: the ``Episode`` record and its runner, playing groups in memory, the
resumable ``TrajectoryCollector``, episode files, dataset export and token samples.
"""

from rlver_agents.episodes.collector import (
    CollectorConfig,
    TrajectoryCollector,
)
from rlver_agents.episodes.episode import (
    AgentFactory,
    Episode,
    EpisodeConfig,
    EpisodeContext,
    RetryPolicy,
    Turn,
    run_episode,
)
from rlver_agents.episodes.episode_file import (
    read_episodes,
    write_episodes,
)
from rlver_agents.episodes.export import (
    export_parquet,
    from_dataset,
    read_parquet,
    to_dataset,
)
from rlver_agents.episodes.groups import (
    episode_seed,
    play_episodes,
    play_groups,
)
from rlver_agents.episodes.samples import (
    TokenSample,
    dialogue_sample,
    turn_samples,
)

__all__ = [
    "AgentFactory",
    "CollectorConfig",
    "Episode",
    "EpisodeConfig",
    "EpisodeContext",
    "RetryPolicy",
    "TokenSample",
    "TrajectoryCollector",
    "Turn",
    "dialogue_sample",
    "episode_seed",
    "export_parquet",
    "from_dataset",
    "play_episodes",
    "play_groups",
    "read_episodes",
    "read_parquet",
    "run_episode",
    "to_dataset",
    "turn_samples",
    "write_episodes",
]
