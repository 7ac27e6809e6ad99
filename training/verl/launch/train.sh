#!/usr/bin/env bash
# Run verl's main_ppo with the rlver overlay, on the Ray cluster this process can reach (a local
# one is started when there is none). Called by single_node.sh and, on the cluster, by the job
# that ray_cluster.sh submits. `ppo` and `grpo` are RLVER's recipe (the rlver_dialogue loop);
# `interaction` is GRPO on verl's tool loop with the simulated user as its interaction
# (configs/rlver_interaction.yaml), reading its rows from $DATA/interaction (written with
# python -m training.verl.data ... --interaction rlver_user). Settings come from the environment:
#   POLICY          policy checkpoint (default Qwen/Qwen2.5-7B-Instruct); the critic starts from it
#   DATA            folder with train.parquet and test.parquet (python -m training.verl.data)
#   NNODES          nodes (default 1);  GPUS_PER_NODE  trainer GPUs per node (default 4)
#   CKPT_DIR        where checkpoints go (default checkpoints/rlver/<algorithm>)
#   RLVER_SIMULATOR_URL  the simulated user's vLLM server, e.g. http://10.0.0.9:8001/v1
# Further arguments are Hydra overrides, e.g. trainer.total_training_steps=200.
# RLVER_DRY_RUN=1 prints the command, one argument a line, instead of running it.
set -euo pipefail
ALGO="${1:?usage: train.sh ppo|grpo|interaction [hydra overrides...]}"
shift
case "$ALGO" in
    ppo | grpo | interaction) ;;
    *) echo "train.sh: unknown algorithm '$ALGO' (ppo, grpo or interaction)" >&2 && exit 2 ;;
esac
: "${RLVER_SIMULATOR_URL:?set RLVER_SIMULATOR_URL to the simulator server, e.g. http://127.0.0.1:8001/v1}"
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
DATA="$(realpath -m "${DATA:-$REPO/data/verl}")"
ROWS="$DATA"
[ "$ALGO" != interaction ] || ROWS="$DATA/interaction"
CKPT_DIR="$(realpath -m "${CKPT_DIR:-$REPO/checkpoints/rlver/$ALGO}")"
for split in train test; do
    [ -f "$ROWS/$split.parquet" ] || {
        echo "train.sh: $ROWS/$split.parquet is missing; run python -m training.verl.data" >&2
        exit 2
    }
done
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export RLVER_SIMULATOR_URL
cd "$REPO"
COMMAND=(
    python -m verl.trainer.main_ppo
    --config-path "$REPO/training/verl/configs" --config-name "rlver_$ALGO"
    data.train_files="$ROWS/train.parquet" data.val_files="$ROWS/test.parquet"
    actor_rollout_ref.model.path="${POLICY:-Qwen/Qwen2.5-7B-Instruct}"
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$REPO/training/verl/configs/agent_loop.yaml"
    trainer.nnodes="${NNODES:-1}" trainer.n_gpus_per_node="${GPUS_PER_NODE:-4}"
    trainer.default_local_dir="$CKPT_DIR"
    +ray_kwargs.ray_init.runtime_env.env_vars.RLVER_SIMULATOR_URL="$RLVER_SIMULATOR_URL"
    +ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH="$PYTHONPATH"
    "$@"
)
if [ -n "${RLVER_DRY_RUN:-}" ]; then
    printf '%s\n' "${COMMAND[@]}"
    exit 0
fi
exec "${COMMAND[@]}"
