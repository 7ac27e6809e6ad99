"""rlver-agents: RLVER simulated users, empathetic agents and the Sentient benchmark for AutoGen.

Importing this package never imports torch; local models and the offline appraisers (the
learned judge, the embedding appraiser) load lazily from their own modules.
"""

from rlver_agents._version import __version__
from rlver_agents.agents.agent import EmpatheticAgent
from rlver_agents.agents.simulator import EmotionTermination, SimulatedUser, dialogue_team
from rlver_agents.appraisers.appraisal import (
    Appraisal,
    AppraisalError,
    AppraisalEvent,
    LLMAppraiser,
)
from rlver_agents.appraisers.embedding_appraiser import EmbeddingAppraiser
from rlver_agents.appraisers.learned_appraiser import LearnedAppraiser
from rlver_agents.emotion import (
    RLVER_TRAIN,
    SAGE,
    Band,
    EmotionMetadata,
    EmotionRules,
    EmotionState,
    EmotionStep,
    TerminationReason,
    apply_change,
    initial_state,
)
from rlver_agents.episodes.collector import CollectorConfig, TrajectoryCollector
from rlver_agents.episodes.episode import Episode, EpisodeContext, Turn, run_episode
from rlver_agents.episodes.episode_file import read_episodes
from rlver_agents.episodes.groups import play_groups
from rlver_agents.evaluation.benchmark import sentient_benchmark
from rlver_agents.personas import Persona, PersonaFileError, load_personas, load_split
from rlver_agents.thinking import ThinkSplit, split_think

__all__ = [
    "RLVER_TRAIN",
    "SAGE",
    "Appraisal",
    "AppraisalError",
    "AppraisalEvent",
    "Band",
    "CollectorConfig",
    "EmbeddingAppraiser",
    "EmotionMetadata",
    "EmotionRules",
    "EmotionState",
    "EmotionStep",
    "EmotionTermination",
    "EmpatheticAgent",
    "Episode",
    "EpisodeContext",
    "LLMAppraiser",
    "LearnedAppraiser",
    "Persona",
    "PersonaFileError",
    "SimulatedUser",
    "TerminationReason",
    "ThinkSplit",
    "TrajectoryCollector",
    "Turn",
    "__version__",
    "apply_change",
    "dialogue_team",
    "initial_state",
    "load_personas",
    "load_split",
    "play_groups",
    "read_episodes",
    "run_episode",
    "sentient_benchmark",
    "split_think",
]
