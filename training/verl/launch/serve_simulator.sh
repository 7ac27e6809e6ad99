#!/usr/bin/env bash
# Serve the simulated user's model (its voice and its judge) with vLLM, on GPUs of its own.
#   SIMULATOR_MODEL=Qwen/Qwen2.5-32B-Instruct SIMULATOR_GPUS=4,5,6,7 \
#       bash training/verl/launch/serve_simulator.sh
# The rollout workers reach it at RLVER_SIMULATOR_URL=http://<this host>:<port>/v1 under the
# served name "simulator" (configs/simulator_vllm.yaml). Extra arguments go to vllm serve.
set -euo pipefail
: "${SIMULATOR_MODEL:?set SIMULATOR_MODEL to the model of the simulated user (a path or hub name)}"
GPUS="${SIMULATOR_GPUS:-4,5,6,7}"
COUNT="$(tr ',' '\n' <<<"$GPUS" | grep -c .)"
TP="${SIMULATOR_TP:-$COUNT}"
CUDA_VISIBLE_DEVICES="$GPUS" exec vllm serve "$SIMULATOR_MODEL" \
    --served-model-name simulator \
    --host "${SIMULATOR_HOST:-0.0.0.0}" --port "${SIMULATOR_PORT:-8001}" \
    --tensor-parallel-size "$TP" \
    --max-model-len "${SIMULATOR_MAX_LEN:-16384}" \
    --gpu-memory-utilization 0.9 \
    "$@"
