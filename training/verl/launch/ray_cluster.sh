#!/usr/bin/env bash
# verl across a Ray cluster of several nodes, the simulated user served on its own node(s).
#   every node:  pip install the project with its verl environment (docs/scale-out.md)
#   head node:   bash training/verl/launch/ray_cluster.sh head
#   other nodes: bash training/verl/launch/ray_cluster.sh worker HEAD_IP
#   simulator:   SIMULATOR_MODEL=<model> SIMULATOR_GPUS=0,1,2,3,4,5,6,7 \
#                    bash training/verl/launch/serve_simulator.sh        (not a Ray node)
#   from head:   NNODES=4 GPUS_PER_NODE=8 DATA=/shared/rlver/data CKPT_DIR=/shared/rlver/ckpt \
#                RLVER_SIMULATOR_URL=http://SIM_HOST:8001/v1 \
#                    bash training/verl/launch/ray_cluster.sh submit ppo [hydra overrides]
# DATA and CKPT_DIR must be on storage every node sees: the job uploads this repository as its
# working_dir, which leaves out git-ignored files such as the parquet data.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
PORT="${RAY_PORT:-6379}"
case "${1:-}" in
head)
    exec ray start --head --port "$PORT" --dashboard-host 0.0.0.0
    ;;
worker)
    exec ray start --address "${2:?usage: ray_cluster.sh worker HEAD_IP}:$PORT"
    ;;
submit)
    ALGO="${2:?usage: ray_cluster.sh submit ppo|grpo|interaction [hydra overrides...]}"
    shift 2
    : "${DATA:?set DATA to a folder on shared storage (python -m training.verl.data writes it)}"
    : "${CKPT_DIR:?set CKPT_DIR to a folder on shared storage}"
    : "${RLVER_SIMULATOR_URL:?set RLVER_SIMULATOR_URL to the simulator server}"
    RUNTIME_ENV="$(python - <<PY
import json, os
keys = ["DATA", "CKPT_DIR", "RLVER_SIMULATOR_URL", "POLICY", "NNODES", "GPUS_PER_NODE"]
env = {k: os.environ[k] for k in keys if os.environ.get(k)}
print(json.dumps({"working_dir": "$REPO", "env_vars": env, "excludes": [".ci/", "checkpoints/"]}))
PY
)"
    exec ray job submit --address "http://${HEAD_IP:-127.0.0.1}:8265" \
        --runtime-env-json "$RUNTIME_ENV" \
        -- bash training/verl/launch/train.sh "$ALGO" "$@"
    ;;
*)
    echo "usage: ray_cluster.sh head | worker HEAD_IP | submit ppo|grpo|interaction [overrides]" >&2
    exit 2
    ;;
esac
