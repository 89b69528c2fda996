"""The command line end to end on a tiny config, in a subprocess as a user would run it."""
import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CACHE = tempfile.mkdtemp(prefix="vidgen-cli-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def _vidgen(*args, check=True):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"   # one CPU device, fast compiles
  env["JAX_COMPILATION_CACHE_DIR"] = _CACHE   # the subprocesses share compiled programs
  out = subprocess.run([sys.executable, "-m", "vidgen_jax", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  if check and out.returncode != 0:
    raise AssertionError(f"vidgen {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
  return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("cli") / "run"
  _vidgen("train", "--config", "configs/vdm_shapes.py:runlocal=True", "--workdir", str(wd),
          "--config.train.num_steps=2", "--config.train.ckpt_every", "2", "--config.data.num_frames=8")
  return wd


def test_train_writes_a_self_describing_workdir(workdir):
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 2
  assert (workdir / "checkpoints" / "2").is_dir()
  assert (workdir / "samples" / "step_2.gif").is_file()
  assert [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()] == [2]
  assert list((workdir / "tb").iterdir())


def test_sample_npz_and_gif(workdir, tmp_path):
  npz = tmp_path / "out.npz"
  _vidgen("sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--prompt",
          "a blue square growing", "--num-samples", "2", "--seed", "3", "--out", str(npz), "--steps", "3")
  data = np.load(npz)
  assert data["videos"].shape == (4, 8, 16, 16, 3) and data["videos"].dtype == np.uint8
  assert list(data["prompts"]) == ["a red circle moving left"] * 2 + ["a blue square growing"] * 2
  again = tmp_path / "again.npz"
  _vidgen("sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--prompt",
          "a blue square growing", "--num-samples", "2", "--seed", "3", "--out", str(again), "--steps", "3")
  np.testing.assert_array_equal(np.load(again)["videos"], data["videos"])   # reproducible from the seed
  gif = tmp_path / "grid.gif"
  _vidgen("sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--out", str(gif),
          "--steps", "3")
  assert gif.stat().st_size > 0
  pyramid = tmp_path / "pyramid.npz"
  _vidgen("sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--prompt",
          "a blue square growing", "--num-samples", "2", "--seed", "3", "--out", str(pyramid), "--steps", "3",
          "--frame-offset", "1")
  videos = np.load(pyramid)["videos"]
  assert videos.shape == data["videos"].shape and np.any(videos != data["videos"])


def test_eval_writes_metrics(workdir):
  out = _vidgen("eval", "--workdir", str(workdir), "--num-samples", "1", "--steps", "2")
  out_dir = workdir / "eval" / "step_2_steps2"   # the sampling settings given name the directory
  assert f"wrote {out_dir}/metrics.json" in out.stdout
  metrics = json.loads((out_dir / "metrics.json").read_text())
  scores = metrics["scores"]
  assert set(scores) == {"generated", "real", "noise", "frozen", "reversed"}
  assert scores["generated"]["seen"]["num"] == 24 and scores["generated"]["heldout"]["num"] == 14
  assert scores["real"]["all"]["colour"] >= 0.9 and scores["noise"]["all"]["joint"] <= 0.1
  by_motion = scores["real"]["all"]["by_motion"]   # every eval prompt counted once, under its own motion
  assert sum(v["num"] for v in by_motion.values()) == 38 and len(by_motion) == 12
  assert "generated motion by prompt motion: moving left" in out.stdout
  for name in ("grid.png", "grid.gif", "samples.npz", "readings.json"):
    assert (out_dir / name).is_file()
  # An expert split of the model with itself samples what the model alone does (to uint8 rounding), and is
  # written beside the model's own results, saying what it paired.
  split = _vidgen("eval", "--workdir", str(workdir), "--num-samples", "1", "--steps", "2",
                  "--low-noise-workdir", str(workdir), "--switch", "0.5")
  split_dir = workdir / "eval" / f"step_2_experts_{workdir.name}-2_s0.5_steps2"   # names the low-noise run
  assert f"wrote {split_dir}/metrics.json" in split.stdout
  assert json.loads((split_dir / "metrics.json").read_text())["experts"] == {
      "low_noise_workdir": str(workdir), "low_noise_step": 2, "switch": 0.5,
      "low_noise_prediction": "x0", "high_noise_prediction": "x0"}
  alone, paired = (np.load(d / "samples.npz")["videos"].astype(int) for d in (out_dir, split_dir))
  assert np.abs(alone - paired).max() <= 1


def test_clear_errors(workdir, tmp_path, capsys):
  """Exit code 2 and the reason on stderr (in-process: each is refused before any compile)."""
  from vidgen_jax import cli
  for argv, message in (
      (["sample", "--workdir", str(workdir), "--prompt", "x", "--out", str(tmp_path / "x.avi")], ".gif, .mp4 or .npz"),
      (["sample", "--workdir", str(tmp_path / "nope"), "--prompt", "x", "--out", "x.gif"], "config.json"),
      (["train", "--config", "configs/vdm_shapes.py:runlocal=True", "--workdir", str(tmp_path / "w"),
        "--config.diffusion.prediction=score"], "diffusion.prediction='score'"),
      (["sample", "--workdir", str(workdir), "--prompt", "x", "--out", str(tmp_path / "x.gif"), "--num-frames", "16",
        "--frame-offset", "2"], "--frame-offset")):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
  assert not (tmp_path / "w").exists()     # a refused config writes no workdir


def test_expert_flags_are_checked_before_anything_loads(workdir, tmp_path, capsys):
  from vidgen_jax import cli
  nowhere = str(tmp_path / "nope")
  for argv, message in ((["eval", "--workdir", str(workdir), "--sweep", "switch=0,1"],
                         "sweeping the expert switch needs a low-noise workdir"),
                        (["sample", "--workdir", nowhere, "--prompt", "x", "--out", "x.gif", "--low-noise-step",
                          "4"], "--low-noise-step needs --low-noise-workdir"),
                        (["sample", "--workdir", nowhere, "--prompt", "x", "--out", "x.gif", "--low-noise-workdir",
                          nowhere, "--switch", "2"], "a noise level t/T in [0, 1]"),
                        (["sample", "--workdir", nowhere, "--prompt", "x", "--out", "x.gif", "--low-noise-cond-scale",
                          "1"], "--low-noise-cond-scale needs --low-noise-workdir")):
    assert cli.main(argv) == 2 and message in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
  import signal
  import time
  wd = tmp_path / "term"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS="--xla_backend_optimization_level=0", JAX_COMPILATION_CACHE_DIR=_CACHE,
             PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "vidgen_jax", "train", "--config", "configs/vdm_shapes.py:runlocal=True",
       "--workdir", str(wd), "--config.train.num_steps=100000", "--config.train.log_every=1",
       "--config.train.ckpt_every=100000"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.time() + 300
  for line in proc.stdout:
    lines.append(line)
    if "step " in line and "/100000" in line:
      proc.send_signal(signal.SIGTERM)
      break
    assert time.time() < deadline, "".join(lines)
  rest, _ = proc.communicate(timeout=300)
  log = "".join(lines) + rest
  assert proc.returncode == 0, log
  assert "SIGTERM received: saving a checkpoint" in log
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and 1 <= steps[-1] < 100000
  assert not (wd / "samples").exists()          # interrupted runs do not pretend to be finished


def test_sample_story_long_video_and_super_resolution(workdir, tmp_path, capsys):
  story = tmp_path / "story.npz"
  _vidgen("sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--prompt",
          "a red circle moving up", "--segment-frames", "6", "--steps", "2", "--out", str(story))
  data = np.load(story)
  assert data["videos"].shape == (1, 12, 16, 16, 3)
  assert list(data["prompts"]) == ["a red circle moving left / a red circle moving up"]
  low = tmp_path / "low.gif"
  from vidgen_jax.io import video as video_io
  video_io.write_video(low, data["videos"][0, :8, ::2, ::2])
  up = tmp_path / "up.npz"
  _vidgen("sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--lowres", str(low),
          "--steps", "2", "--out", str(up))
  assert np.load(up)["videos"].shape == (1, 8, 16, 16, 3)
  from vidgen_jax import cli
  assert cli.main(["sample", "--workdir", str(workdir), "--prompt", "x", "--given", str(low), "--given-frames", "9",
                   "--out", str(tmp_path / "b.npz")]) == 2
  assert "fewer than --given-frames" in capsys.readouterr().err


def test_eval_story_and_extension_report_the_real_ceiling(workdir, capsys):
  out = _vidgen("eval", "--workdir", str(workdir), "--task", "story", "--num-frames", "16", "--steps", "2",
                "--method", "replacement", "--seed", "1", "--overlap", "2")
  assert "seen ceiling (real clips continued)" in out.stdout
  out_dir = workdir / "eval" / "step_2_story_replacement_steps2_overlap2_seed1"
  metrics = json.loads((out_dir / "metrics.json").read_text())
  assert metrics["task"] == "story" and metrics["num_frames"] == 16 and metrics["seed"] == 1
  assert len(metrics["scores"]["all"]["per_segment"]) == 2 and metrics["scores"]["all"]["num_videos"] == 38
  ceiling = metrics["ceiling_real"]
  assert ceiling["all"]["all_segments"] >= 0.95 and ceiling["heldout"]["num_videos"] == 14   # back and forth, 16 px
  from vidgen_jax import cli
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "extension", "--num-frames", "12"]) == 2
  assert "multiple of 8" in capsys.readouterr().err
