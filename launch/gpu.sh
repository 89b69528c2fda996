#!/usr/bin/env bash
# Trains on NVIDIA GPUs: all GPUs of one node, or several nodes (run this once on every node).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh --config configs/<file>.py[:args] --workdir DIR [--config.key=value ...]

Single node: one process drives every visible GPU (restrict with CUDA_VISIBLE_DEVICES).
  launch/gpu.sh --config configs/x.py --workdir /data/runs/x

Multi-node: start the same command on every node with
  COORDINATOR_ADDRESS=host0:1234   address and free port of process 0, reachable from every node
  NUM_PROCESSES=N                  number of nodes (one process per node)
  PROCESS_ID=i                     0 .. N-1, different on every node
  e.g. COORDINATOR_ADDRESS=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 launch/gpu.sh --config ... --workdir ...
Then `vidgen train --multihost` runs, with those three values exported (and JAX_COORDINATOR_ADDRESS).
DIR must then be storage shared by all nodes (NFS, gs://, ...).

The venv is prepared by launch/setup_env.sh with VIDGEN_ACCELERATOR=cuda12 (installs jax[cuda12]);
PYTHON, VENV_DIR and VIDGEN_EXTRAS apply. Set VIDGEN_SKIP_SETUP=1 to skip that step.
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
if [[ $# -eq 0 ]]; then
  usage >&2
  exit 2
fi

die() {
  echo "gpu.sh: $*" >&2
  exit 2
}

has_config=0
has_workdir=0
for arg in "$@"; do
  case "${arg}" in
    --config|--config=*) has_config=1 ;;
    --workdir|--workdir=*) has_workdir=1 ;;
  esac
done
[[ "${has_config}" == 1 ]] || die "missing --config"
[[ "${has_workdir}" == 1 ]] || die "missing --workdir"

NUM_PROCESSES="${NUM_PROCESSES:-1}"
[[ "${NUM_PROCESSES}" =~ ^[1-9][0-9]*$ ]] \
  || die "NUM_PROCESSES must be a positive integer, got '${NUM_PROCESSES}'"
multihost=()
if [[ "${NUM_PROCESSES}" -gt 1 ]]; then
  [[ -n "${COORDINATOR_ADDRESS:-}" ]] || die "multi-node runs need COORDINATOR_ADDRESS=host:port"
  [[ "${COORDINATOR_ADDRESS}" == *:* ]] \
    || die "COORDINATOR_ADDRESS must be host:port, got '${COORDINATOR_ADDRESS}'"
  [[ "${PROCESS_ID:-}" =~ ^[0-9]+$ ]] || die "multi-node runs need PROCESS_ID=0..$((NUM_PROCESSES - 1))"
  (( PROCESS_ID < NUM_PROCESSES )) || die "PROCESS_ID=${PROCESS_ID} must be < NUM_PROCESSES=${NUM_PROCESSES}"
  export COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID
  export JAX_COORDINATOR_ADDRESS="${COORDINATOR_ADDRESS}"
  multihost=(--multihost)
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"
export VENV_DIR
if [[ "${VIDGEN_SKIP_SETUP:-0}" != "1" ]]; then
  VIDGEN_ACCELERATOR=cuda12 bash "${REPO_ROOT}/launch/setup_env.sh"
fi
cd "${REPO_ROOT}"
exec "${VENV_DIR}/bin/vidgen" train "${multihost[@]}" "$@"
