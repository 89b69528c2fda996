#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM slice (v4 / v5e / v5p / v6e pods) from your workstation.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: TPU_NAME=my-tpu ZONE=us-central2-b [PROJECT=my-project] \
         launch/tpu_pod.sh --config configs/<file>.py[:args] --workdir gs://BUCKET/RUN \
         [--config.key=value ...]

From this machine (which needs gcloud, logged in), for all workers of the TPU VM at once:
  1. packs this checkout (without .git, .venv and workdirs) and copies it to $REMOTE_DIR on every worker
     (gcloud compute tpus tpu-vm scp --worker=all);
  2. runs launch/setup_env.sh there with VIDGEN_ACCELERATOR=tpu (installs jax[tpu]);
  3. runs on every worker, in the foreground:
       python -m vidgen_jax train --multihost --config ... --workdir gs://... [other args]
     --multihost makes each process call jax.distributed.initialize(), which finds the slice by itself.

The workdir must be a gs:// path: checkpoints, logs and samples are written by all hosts to one place.
For long runs start this inside tmux/screen on a machine that stays up.

Environment variables:
  TPU_NAME     name of the TPU VM (required)
  ZONE         its zone, e.g. us-central2-b (required)
  PROJECT      GCP project (default: gcloud's configured project)
  REMOTE_DIR   checkout location on the workers (default: vidgen-jax, relative to the home directory)
  PYTHON       interpreter for the venv on the workers (default: python3; e.g. python3.12)
  VIDGEN_EXTRAS  extras to install on the workers (default: none)
  SKIP_SETUP=1   copy the code but do not run setup_env.sh (the venv is already there)
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
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

: "${TPU_NAME:?set TPU_NAME to the TPU VM name (see -h)}"
: "${ZONE:?set ZONE to the TPU VM zone (see -h)}"
PROJECT="${PROJECT:-}"
REMOTE_DIR="${REMOTE_DIR:-vidgen-jax}"
PYTHON="${PYTHON:-python3}"
VIDGEN_EXTRAS="${VIDGEN_EXTRAS:-}"
SKIP_SETUP="${SKIP_SETUP:-0}"

workdir=""
has_config=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --workdir) workdir="${args[i + 1]:-}" ;;
    --workdir=*) workdir="${args[i]#--workdir=}" ;;
    --config|--config=*) has_config=1 ;;
  esac
done
[[ "${has_config}" == 1 ]] || die "missing --config"
[[ -n "${workdir}" ]] || die "missing --workdir"
[[ "${workdir}" == gs://* ]] || die "--workdir must be a gs:// path shared by all workers, got '${workdir}'"
command -v gcloud >/dev/null || die "gcloud is not on PATH"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD_FLAGS=(--zone="${ZONE}" --worker=all)
if [[ -n "${PROJECT}" ]]; then
  GCLOUD_FLAGS+=(--project="${PROJECT}")
fi

bundle="$(mktemp -d)/vidgen-jax.tar.gz"
trap 'rm -rf "$(dirname "${bundle}")"' EXIT
tar -czf "${bundle}" -C "${REPO_ROOT}" --exclude=./.git --exclude=./.venv --exclude=./workdirs \
  --exclude='__pycache__' --exclude='*.egg-info' .
echo "tpu_pod.sh: copying $(du -h "${bundle}" | cut -f1) to ${TPU_NAME}:${REMOTE_DIR} on all workers"
gcloud compute tpus tpu-vm scp "${bundle}" "${TPU_NAME}:vidgen-jax.tar.gz" "${GCLOUD_FLAGS[@]}"

remote_dir_q="$(printf '%q' "${REMOTE_DIR}")"
remote="set -euo pipefail; mkdir -p ${remote_dir_q}; tar -xzf ~/vidgen-jax.tar.gz -C ${remote_dir_q};"
remote+=" cd ${remote_dir_q};"
if [[ "${SKIP_SETUP}" != "1" ]]; then
  remote+=" PYTHON=$(printf '%q' "${PYTHON}") VIDGEN_EXTRAS=$(printf '%q' "${VIDGEN_EXTRAS}")"
  remote+=" VIDGEN_ACCELERATOR=tpu bash launch/setup_env.sh;"
fi
remote+=" .venv/bin/python -m vidgen_jax train --multihost $(printf '%q ' "$@")"

echo "tpu_pod.sh: starting training on all workers of ${TPU_NAME}"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${GCLOUD_FLAGS[@]}" \
  --command="bash -c $(printf '%q' "${remote}")"
