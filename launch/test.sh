#!/usr/bin/env bash
# The README's test command (and CI's): set up the environment with the test extra, then run the suite.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<'USAGE'
Usage: launch/test.sh [pytest arguments]

  1. VIDGEN_EXTRAS=test launch/setup_env.sh   (venv + dependencies + test tools, once)
  2. python -m pytest tests [pytest arguments]  (CPU, 8 fake devices; a few minutes)
USAGE
  exit 0
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"
VIDGEN_EXTRAS="${VIDGEN_EXTRAS:-test}" bash launch/setup_env.sh
exec "${VENV_DIR}/bin/python" -m pytest -q --durations=15 tests "$@"
