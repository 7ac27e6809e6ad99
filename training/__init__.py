"""The learning side of rlver-agents: GRPO (TRL) and PPO on the empathetic agent's policy."""
