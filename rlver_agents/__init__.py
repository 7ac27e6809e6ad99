"""rlver-agents: RLVER simulated users, empathetic agents and the Sentient benchmark for AutoGen.

Importing this package never imports torch; local models and the embedding appraiser load
lazily from their own modules.
"""

from importlib.metadata import PackageNotFoundError, version

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
from rlver_agents.personas import Persona, PersonaFileError, load_personas, load_split
from rlver_agents.thinking import ThinkSplit, split_think

try:
    __version__ = version("rlver-agents")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "RLVER_TRAIN",
    "SAGE",
    "Band",
    "EmotionMetadata",
    "EmotionRules",
    "EmotionState",
    "EmotionStep",
    "Persona",
    "PersonaFileError",
    "TerminationReason",
    "ThinkSplit",
    "__version__",
    "apply_change",
    "initial_state",
    "load_personas",
    "load_split",
    "split_think",
]
