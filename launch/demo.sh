#!/usr/bin/env bash
# The README's main command: set up the environment, train the demo text-to-video diffusion model on the
# built-in moving-shapes data, then write sample videos for a few prompts.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  cat <<'USAGE'
Usage: launch/demo.sh [--config.key=value ...]

  1. launch/setup_env.sh                        (venv + dependencies, once)
  2. vidgen train --config configs/vdm_shapes.py:variant=demo --workdir $WORKDIR [overrides]
  3. vidgen sample ... --out $WORKDIR/demo.gif  (two samples for each of six prompts)

Environment: WORKDIR (default workdirs/vdm_demo). Re-running resumes or, when finished, only samples.
USAGE
  exit 0
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
WORKDIR="${WORKDIR:-workdirs/vdm_demo}"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"

bash launch/setup_env.sh
"${VENV_DIR}/bin/vidgen" train --config configs/vdm_shapes.py:variant=demo --workdir "${WORKDIR}" "$@"
"${VENV_DIR}/bin/vidgen" sample --workdir "${WORKDIR}" --num-samples 2 --seed 0 --out "${WORKDIR}/demo.gif" \
  --prompt "a red circle moving right" --prompt "a green square moving up" \
  --prompt "a blue triangle moving left" --prompt "a yellow circle moving down" \
  --prompt "a magenta square growing" --prompt "a white triangle moving down and right"
echo "demo: samples in ${WORKDIR}/demo.gif (and ${WORKDIR}/samples/); try: ${VENV_DIR}/bin/vidgen sample --workdir ${WORKDIR} --prompt \"a cyan circle moving up\" --out my.gif"
