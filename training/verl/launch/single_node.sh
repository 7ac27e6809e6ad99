#!/usr/bin/env bash
# PPO, GRPO or GRPO through the interaction (train.sh) on one 8-GPU node: the trainer (actor, critic, vLLM rollout) on TRAIN_GPUS, the
# simulated user on the other GPUs, served first with serve_simulator.sh.
#   SIMULATOR_MODEL=<model> bash training/verl/launch/serve_simulator.sh &   # GPUs 4-7
#   POLICY=Qwen/Qwen2.5-7B-Instruct bash training/verl/launch/single_node.sh ppo
# TRAIN_PERSONAS / TEST_PERSONAS pick the personas (a bundled split or a file, e.g. the RLVER
# profiles); the parquet files are written to DATA once. See train.sh for the other settings.
# On four 80 GB GPUs the actor's and the critic's Adam moments go to host memory
# (docs/scale-out.md, memory per GPU); a later override on the command line wins.
set -euo pipefail
ALGO="${1:?usage: single_node.sh ppo|grpo|interaction [hydra overrides...]}"
shift
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
DATA="$(realpath -m "${DATA:-$REPO/data/verl}")"
TRAIN_GPUS="${TRAIN_GPUS:-0,1,2,3}"
GPUS_PER_NODE="$(tr ',' '\n' <<<"$TRAIN_GPUS" | grep -c .)"
export DATA TRAIN_GPUS GPUS_PER_NODE
export NNODES=1
export RLVER_SIMULATOR_URL="${RLVER_SIMULATOR_URL:-http://127.0.0.1:${SIMULATOR_PORT:-8001}/v1}"
ROWS="$DATA"
ROW_FLAGS=()
if [ "$ALGO" = interaction ]; then
    ROWS="$DATA/interaction"
    ROW_FLAGS=(--interaction rlver_user)
fi
cd "$REPO"
[ -f "$ROWS/train.parquet" ] ||
    python -m training.verl.data "${TRAIN_PERSONAS:-train}" --split train "${ROW_FLAGS[@]}" \
        --out "$ROWS/train.parquet" >&2
[ -f "$ROWS/test.parquet" ] ||
    python -m training.verl.data "${TEST_PERSONAS:-test}" --split test "${ROW_FLAGS[@]}" \
        --out "$ROWS/test.parquet" >&2
CUDA_VISIBLE_DEVICES="$TRAIN_GPUS" exec bash "$REPO/training/verl/launch/train.sh" "$ALGO" \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=true \
    critic.fsdp.optimizer_offload=true \
    "$@"
