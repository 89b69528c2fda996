#!/usr/bin/env bash
# The README's test command (and CI's): set up the environment with the test extra, then run the suite.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<'USAGE'
Usage: launch/test.sh [pytest arguments]

  1. VIDGEN_EXTRAS=test launch/setup_env.sh   (venv + dependencies + test tools, once)
  2. python -m pytest tests [pytest arguments]  (CPU, 8 fake devices each; a few minutes)

  The suite runs on VIDGEN_TEST_WORKERS pytest-xdist processes (default: the CPU count, at most 4; 1 runs
  it in this process), each test file on one worker so module fixtures are built once.
USAGE
  exit 0
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"
VIDGEN_EXTRAS="${VIDGEN_EXTRAS:-test}" bash launch/setup_env.sh
CPUS="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
WORKERS="${VIDGEN_TEST_WORKERS:-$(( CPUS < 4 ? CPUS : 4 ))}"
PARALLEL=()
if (( WORKERS > 1 )); then
  PARALLEL=(-n "${WORKERS}" --dist loadfile)
fi
exec "${VENV_DIR}/bin/python" -m pytest -q --durations=15 "${PARALLEL[@]}" tests "$@"
