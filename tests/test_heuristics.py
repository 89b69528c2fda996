"""The analytic read-out must agree with the ground truth of real moving-shapes videos (its ceiling)."""
import numpy as np

from vidgen_jax.data import moving_shapes
from vidgen_jax.eval import heuristics


def _real(n=300, size=32, frames=8):
  src = moving_shapes.MovingShapes(num_examples=n, image_size=size, num_frames=frames, seed=1, split="all")
  items = [src[i] for i in range(n)]
  return np.stack([x["video"] for x in items]), [x["caption"] for x in items]


def test_readout_on_real_videos_is_near_perfect():
  videos, prompts = _real()
  summary = heuristics.summarise(heuristics.score(videos, prompts))
  assert summary["colour_acc"] == 1.0
  assert summary["motion_acc"] >= 0.98, summary
  assert summary["rotation_reads_static_acc"] >= 0.95, summary


def test_readout_on_bad_videos_is_low():
  videos, prompts = _real(n=120)
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, videos.shape, dtype=np.uint8)
  frozen = np.repeat(videos[:, :1], videos.shape[1], axis=1)
  backwards = videos[:, ::-1]
  for bad, max_motion in ((noise, 0.3), (frozen, 0.05), (backwards, 0.05)):
    s = heuristics.summarise(heuristics.score(bad, prompts))
    assert s["motion_acc"] <= max_motion, s
  assert heuristics.read_colour(np.zeros((8, 32, 32, 3), np.uint8)) is None
  assert heuristics.read_motion(np.zeros((8, 32, 32, 3), np.uint8)) is None


def test_rotation_per_frame_reads_the_turn_of_rendered_clips():
  """The mean turn per frame of rendered clips is the true one (clockwise positive) within 4 degrees, 1 on
  average; objects that translate, scale or cannot show a turn (circles, empty frames) read about 0. With
  per-pixel noise of standard deviation 25 / 255 added (a sampler's leftover noise) it stays within 1.5 on
  average: noise off the object must not count (a measure on the raw frames reads about 0 for every clip)."""
  ms = moving_shapes
  rng = np.random.default_rng(0)
  errors, noisy_errors = [], []
  for seed in range(6):
    for shape, motion in (("square", "rotating clockwise"), ("triangle", "rotating counterclockwise"),
                          ("square", "moving down and right"), ("triangle", "shrinking"), ("circle", "growing")):
      params = ms.sample_params(np.random.default_rng(seed), ("cyan", shape, motion), 32, 8)
      clip = ms.render(params, 32, 8)
      turn = heuristics.rotation_per_frame(clip)
      true = (params["angle1"] - params["angle0"]) / 7
      assert turn.shape == (7,) and abs(float(turn.mean()) - true) < 4.0, (shape, motion, turn, true)
      errors.append(abs(float(turn.mean()) - true))
      if motion.startswith("rotating"):
        assert np.sign(turn).tolist().count(np.sign(true)) >= 6      # the direction, frame by frame
      noisy = np.clip(clip + rng.normal(0, 25, clip.shape), 0, 255).astype(np.uint8)
      noisy_errors.append(abs(float(heuristics.rotation_per_frame(noisy).mean()) - true))
  assert np.mean(errors) < 1.0 and np.mean(noisy_errors) < 1.5, (np.mean(errors), np.mean(noisy_errors))
  np.testing.assert_array_equal(heuristics.rotation_per_frame(np.zeros((3, 16, 16, 3), np.uint8)), [0, 0])
