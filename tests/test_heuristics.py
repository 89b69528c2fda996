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
