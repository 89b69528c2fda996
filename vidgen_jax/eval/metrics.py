"""Metrics of a set of videos with their prompts, from the shapes evaluator's readings and features.

* accuracy: the fraction of videos whose evaluator reading matches the prompt, per attribute (colour,
  shape, motion) and joint (all three).
* Fréchet evaluator distance (FED): the Fréchet distance between Gaussians fitted to the evaluator's
  128-d features of the videos and of real clips of the same prompts (FVD's formula; evaluator features
  instead of I3D's, which mean nothing on this data). It is biased upwards for small sets, so it is only
  compared between sets of the same size (the real ceiling is measured at the size of the generated set).
* diversity: the mean pairwise feature distance between videos of the same prompt, averaged over prompts
  (0 = every sample of a prompt is the same video: mode collapse).
* rotation turn: for rotating prompts, the degrees per frame the object turns in the prompt's direction
  (`heuristics.rotation_per_frame`). The evaluator reads a slow turn as static; this says how slow: real
  clips turn 7.5-15 degrees per frame, a static or shapeless object 0, a turn the wrong way is negative.
"""
import collections
import itertools

import numpy as np

from vidgen_jax.data import moving_shapes
from vidgen_jax.eval import evaluator as ev
from vidgen_jax.eval import heuristics


def prompt_labels(prompt: str) -> dict:
  colour, shape, motion = moving_shapes.parse_caption(prompt)
  return {"colour": moving_shapes.COLOUR_NAMES[colour], "shape": moving_shapes.SHAPES[shape],
          "motion": moving_shapes.MOTIONS[motion]}


def correctness(readings: list[dict], prompts: list[str]) -> np.ndarray:
  """(N, 3) bool: does the reading match the prompt's colour, shape, motion."""
  if len(readings) != len(prompts):
    raise ValueError(f"{len(readings)} readings for {len(prompts)} prompts")
  rows = []
  for r, p in zip(readings, prompts):
    want = prompt_labels(p)
    rows.append([r[a] == want[a] for a in ev.ATTRIBUTES])
  return np.array(rows, bool).reshape(-1, len(ev.ATTRIBUTES))


def accuracy(right: np.ndarray) -> dict:
  if len(right) == 0:
    raise ValueError("accuracy of an empty set")
  out = {a: float(right[:, i].mean()) for i, a in enumerate(ev.ATTRIBUTES)}
  out["joint"] = float(right.all(1).mean())
  return out


def rotation_turn(videos, prompts) -> np.ndarray:
  """(N,) mean degrees per frame each uint8 video (N, T, H, W, 3) turns in its prompt's direction:
  clockwise turns count positive for 'rotating clockwise', negative for 'rotating counterclockwise'. NaN
  for prompts that do not rotate (they are not measured)."""
  if len(videos) != len(prompts):
    raise ValueError(f"{len(videos)} videos for {len(prompts)} prompts")
  out = np.full(len(prompts), np.nan)
  for i, (v, p) in enumerate(zip(videos, prompts)):
    motion = prompt_labels(p)["motion"]
    if motion in moving_shapes.ROTATIONS:
      sign = 1.0 if motion == "rotating clockwise" else -1.0
      out[i] = sign * float(heuristics.rotation_per_frame(np.asarray(v)).mean())
  return out


def by_motion(right: np.ndarray, prompts: list[str], turns=None) -> dict:
  """{prompt motion: {"motion": accuracy, "joint": accuracy, "num": videos}}, in MOTIONS order: where a
  model's failures sit (a per-motion view of `accuracy`; `right` as from `correctness`). With `turns`
  (`rotation_turn` of the same videos) each rotation also gets "turn", its videos' mean."""
  right = np.asarray(right, bool).reshape(-1, len(ev.ATTRIBUTES))
  if len(right) != len(prompts) or (turns is not None and len(turns) != len(prompts)):
    raise ValueError(f"{len(right)} rows of correctness and {'no' if turns is None else len(turns)} turns "
                     f"for {len(prompts)} prompts")
  wanted = np.array([prompt_labels(p)["motion"] for p in prompts])
  turns = None if turns is None else np.asarray(turns, np.float64)
  m = ev.ATTRIBUTES.index("motion")
  out = {}
  for name in moving_shapes.MOTIONS:
    sel = wanted == name
    rows = right[sel]
    if len(rows):
      out[name] = {"motion": float(rows[:, m].mean()), "joint": float(rows.all(1).mean()), "num": len(rows)}
      if turns is not None and name in moving_shapes.ROTATIONS:
        out[name]["turn"] = float(turns[sel].mean())
  return out


def motion_line(by_motion_scores: dict) -> str:
  """`by_motion` in one line: 'moving left 100% (6), ..., rotating clockwise 25% (4, +3.1 deg/frame)' (motion
  accuracy, videos, and a rotation's mean turn in the prompt's direction where measured)."""
  def one(k, v):
    turn = f", {v['turn']:+.1f} deg/frame" if "turn" in v else ""
    return f"{k} {v['motion']:.0%} ({v['num']}{turn})"
  return ", ".join(one(k, v) for k, v in by_motion_scores.items())


def gaussian_stats(features: np.ndarray):
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need at least 2 feature vectors (N, D), got {f.shape}")
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m):
  w, v = np.linalg.eigh((m + m.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), by symmetric eigendecompositions."""
  mu_a, s_a = gaussian_stats(features_a)
  mu_b, s_b = gaussian_stats(features_b)
  if mu_a.shape != mu_b.shape:
    raise ValueError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}")
  root_a = _sqrt_psd(s_a)
  cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
  trace_cross = np.sqrt(np.clip(cross, 0.0, None)).sum()
  value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * trace_cross)
  return max(value, 0.0)


def diversity(features: np.ndarray, prompts: list[str]) -> float | None:
  """Mean over prompts (with >= 2 videos) of the mean pairwise L2 distance of their features."""
  groups = collections.defaultdict(list)
  for f, p in zip(np.asarray(features, np.float64), prompts):
    groups[p].append(f)
  per_prompt = [np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(g, 2)])
                for g in groups.values() if len(g) >= 2]
  return float(np.mean(per_prompt)) if per_prompt else None


def summarise(features, readings, prompts, reference_features, turns=None) -> dict:
  """accuracy, joint, FED against `reference_features` and diversity of one set of videos (with `turns`, the
  rotations' turn in `by_motion`)."""
  right = correctness(readings, prompts)
  out = accuracy(right)
  out["by_motion"] = by_motion(right, prompts, turns)
  out["fed"] = frechet_distance(features, reference_features)
  out["diversity"] = diversity(features, prompts)
  out["num"] = len(prompts)
  return out


def by_split(features, readings, prompts, splits, reference: dict, turns=None) -> dict:
  """summarise() per split name (e.g. 'seen', 'heldout') and over all; reference maps split -> features."""
  features, splits = np.asarray(features), np.asarray(splits)
  turns = None if turns is None else np.asarray(turns)
  out = {}
  for name in list(dict.fromkeys(splits.tolist())) + ["all"]:
    sel = np.ones(len(splits), bool) if name == "all" else splits == name
    idx = np.flatnonzero(sel)
    out[name] = summarise(features[idx], [readings[i] for i in idx], [prompts[i] for i in idx],
                          reference[name], None if turns is None else turns[idx])
  return out
