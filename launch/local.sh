#!/usr/bin/env bash
# Trains on this machine (CPU, or every local accelerator) with the project venv.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh --config configs/<file>.py[:args] --workdir DIR [--config.key=value ...] [more args]

Makes sure the venv exists and is current (launch/setup_env.sh; its variables PYTHON, VENV_DIR,
VIDGEN_EXTRAS and VIDGEN_ACCELERATOR apply), then runs
  vidgen train --config ... --workdir ... [everything else, passed through unchanged]

Set VIDGEN_SKIP_SETUP=1 to skip the environment check.
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

has_flag() {
  local flag="$1"
  shift
  local arg
  for arg in "$@"; do
    [[ "${arg}" == "${flag}" || "${arg}" == "${flag}="* ]] && return 0
  done
  return 1
}
for flag in --config --workdir; do
  if ! has_flag "${flag}" "$@"; then
    echo "local.sh: missing ${flag}" >&2
    usage >&2
    exit 2
  fi
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"
export VENV_DIR
if [[ "${VIDGEN_SKIP_SETUP:-0}" != "1" ]]; then
  bash "${REPO_ROOT}/launch/setup_env.sh"
fi
cd "${REPO_ROOT}"
exec "${VENV_DIR}/bin/vidgen" train "$@"
