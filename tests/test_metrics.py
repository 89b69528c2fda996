"""Evaluation metrics: accuracy bookkeeping, the Fréchet distance against closed forms, diversity."""
import numpy as np
import pytest

from vidgen_jax.eval import metrics


def _reading(colour, shape, motion):
  return {"colour": colour, "shape": shape, "motion": motion}


def test_correctness_and_accuracy():
  prompts = ["a red circle moving left", "a blue square rotating clockwise", "a red circle moving left"]
  readings = [_reading("red", "circle", "moving left"), _reading("blue", "triangle", "rotating clockwise"),
              _reading("green", "circle", "static")]
  right = metrics.correctness(readings, prompts)
  np.testing.assert_array_equal(right, [[1, 1, 1], [1, 0, 1], [0, 1, 0]])
  acc = metrics.accuracy(right)
  assert acc == pytest.approx({"colour": 2 / 3, "shape": 2 / 3, "motion": 2 / 3, "joint": 1 / 3})
  with pytest.raises(ValueError, match="readings"):
    metrics.correctness(readings[:2], prompts)


def test_frechet_distance_of_gaussians_matches_closed_form():
  rng = np.random.default_rng(0)
  n, d = 200_000, 3
  a = rng.normal(0.0, 1.0, (n, d))
  b = rng.normal(0.0, 2.0, (n, d)) + np.array([1.0, 0.0, 0.0])
  # N(0, I) vs N(m, 4I): |m|^2 + tr(I + 4I - 2*2I) = 1 + 3 = 4.
  assert metrics.frechet_distance(a, b) == pytest.approx(4.0, rel=0.02)
  assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_non_commuting_covariances():
  rng = np.random.default_rng(1)
  s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
  s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
  a = rng.multivariate_normal([0, 0], s1, 300_000)
  b = rng.multivariate_normal([0, 0], s2, 300_000)
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(w)) @ v.T
  expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvalsh(r1 @ s2 @ r1)).sum()
  assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=0.03, abs=0.01)
  assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2"):
    metrics.frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
  with pytest.raises(ValueError, match="sizes differ"):
    metrics.frechet_distance(np.ones((5, 4)), np.ones((5, 3)))


def test_diversity_is_zero_for_collapse_and_per_prompt():
  feats = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
  prompts = ["a", "a", "b", "b", "c"]  # c has one sample and is skipped
  assert metrics.diversity(feats, prompts) == pytest.approx((5.0 + 0.0) / 2)
  assert metrics.diversity(feats[:1], prompts[:1]) is None


def test_by_split_reports_each_split_and_all():
  rng = np.random.default_rng(2)
  prompts = ["a red circle moving left"] * 4 + ["a green square growing"] * 4
  splits = ["seen"] * 4 + ["heldout"] * 4
  readings = [_reading("red", "circle", "moving left")] * 4 + [_reading("green", "square", "shrinking")] * 4
  feats = rng.normal(size=(8, 3))
  ref = {"seen": rng.normal(size=(10, 3)), "heldout": rng.normal(size=(10, 3)), "all": rng.normal(size=(20, 3))}
  out = metrics.by_split(feats, readings, prompts, splits, ref)
  assert set(out) == {"seen", "heldout", "all"}
  assert out["seen"]["joint"] == 1.0 and out["heldout"]["motion"] == 0.0 and out["all"]["joint"] == 0.5
  assert out["all"]["num"] == 8 and out["seen"]["diversity"] > 0


def test_by_motion_splits_accuracy_by_the_prompts_motion():
  prompts = ["a red circle moving left", "a blue square rotating clockwise", "a red circle moving left",
             "a green triangle rotating clockwise"]
  readings = [_reading("red", "circle", "moving left"), _reading("blue", "triangle", "rotating clockwise"),
              _reading("red", "circle", "static"), _reading("green", "triangle", "static")]
  out = metrics.by_motion(metrics.correctness(readings, prompts), prompts)
  assert list(out) == ["moving left", "rotating clockwise"]   # MOTIONS order, only motions asked for
  assert out["moving left"] == {"motion": 0.5, "joint": 0.5, "num": 2}
  assert out["rotating clockwise"] == {"motion": 0.5, "joint": 0.0, "num": 2}
  assert metrics.motion_line(out) == "moving left 50% (2), rotating clockwise 50% (2)"
  with pytest.raises(ValueError, match="prompts"):
    metrics.by_motion(metrics.correctness(readings, prompts), prompts[:3])


def test_rotation_turn_is_signed_by_the_prompts_direction():
  """A clip turning clockwise reads its true rate for 'rotating clockwise', minus it for 'counterclockwise';
  prompts that do not rotate are not measured (NaN)."""
  from vidgen_jax.data import moving_shapes as ms
  params = ms.sample_params(np.random.default_rng(0), ("red", "square", "rotating clockwise"), 32, 8)
  clip = ms.render(params, 32, 8)
  true = (params["angle1"] - params["angle0"]) / 7
  assert true > 7
  turns = metrics.rotation_turn(np.stack([clip] * 3), ["a red square rotating clockwise",
                                                       "a red square rotating counterclockwise",
                                                       "a red square moving left"])
  assert abs(turns[0] - true) < 3 and turns[1] == -turns[0] and np.isnan(turns[2])
  still = np.repeat(clip[:1], 8, axis=0)
  assert metrics.rotation_turn(still[None], ["a red square rotating clockwise"])[0] == 0.0
  with pytest.raises(ValueError, match="prompts"):
    metrics.rotation_turn(clip[None], [])


def test_by_motion_adds_the_rotations_turn():
  prompts = ["a red circle moving left", "a blue square rotating clockwise", "a green triangle rotating clockwise"]
  readings = [_reading("red", "circle", "moving left"), _reading("blue", "square", "static"),
              _reading("green", "triangle", "static")]
  turns = np.array([np.nan, 2.0, -1.0])
  out = metrics.by_motion(metrics.correctness(readings, prompts), prompts, turns)
  assert "turn" not in out["moving left"] and out["rotating clockwise"]["turn"] == 0.5
  assert metrics.motion_line(out) == "moving left 100% (1), rotating clockwise 0% (2, +0.5 deg/frame)"
  with pytest.raises(ValueError, match="turns"):
    metrics.by_motion(metrics.correctness(readings, prompts), prompts, turns[:2])
  split = metrics.by_split(np.random.default_rng(0).normal(size=(3, 2)), readings, prompts, ["seen"] * 3,
                           {"seen": np.eye(2), "all": np.eye(2)}, turns)
  assert split["all"]["by_motion"]["rotating clockwise"]["turn"] == 0.5


def test_headline_reports_the_rotations_turn_for_each_set():
  from vidgen_jax.eval import run_eval
  rot = {"motion": 0.0, "joint": 0.0, "num": 2}
  split = {"colour": 1.0, "shape": 1.0, "motion": 0.5, "joint": 0.5, "fed": 3.0}
  scores = {"generated": {"seen": split, "all": {"by_motion": {"rotating clockwise": {**rot, "turn": 1.25}}}},
            "real": {"seen": split, "all": {"by_motion": {"rotating clockwise": {**rot, "turn": 11.0},
                                                          "rotating counterclockwise": {**rot, "turn": 9.5}}}}}
  text = run_eval.headline({"scores": scores})
  assert text.splitlines()[-1] == ("rotations turn (deg/frame, the prompt's way): generated clockwise +1.2 | "
                                   "real clockwise +11.0, counterclockwise +9.5")
