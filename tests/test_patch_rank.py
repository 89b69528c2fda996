"""launch/patch_rank_vs_motion.py: the per-patch subspace projection its diagnostic rests on."""
import importlib.util
import pathlib

import numpy as np

_PATH = pathlib.Path(__file__).resolve().parents[1] / "launch" / "patch_rank_vs_motion.py"
_spec = importlib.util.spec_from_file_location("patch_rank_vs_motion", _PATH)
prm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prm)


def _videos(n=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 12, 3), dtype=np.uint8)


def test_patches_round_trip_and_hold_one_p_by_p_block_each():
  v = _videos()
  rows = prm.patches(v, 4)
  assert rows.shape == (6 * 3 * 2 * 3, 48)
  np.testing.assert_array_equal(rows[1].reshape(4, 4, 3), v[0, 0, 0:4, 4:8])   # second patch of frame 0
  np.testing.assert_array_equal(prm.unpatch(rows, v.shape, 4), v)


def test_projection_is_exact_at_full_rank_and_its_error_shrinks_with_rank():
  v = _videos(20)
  mean, directions, ratios = prm.patch_subspace(v, 2)
  assert directions.shape == (12, 12) and np.isclose(ratios.sum(), 1.0) and np.all(np.diff(ratios) <= 1e-12)
  np.testing.assert_array_equal(prm.project(v, mean, directions, 2), v)
  errors = [np.abs(prm.project(v, mean, directions[:k], 2).astype(float) - v).mean() for k in (2, 6, 10)]
  assert errors[0] > errors[1] > errors[2] > 0
