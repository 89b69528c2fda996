"""Analytic read-out of a moving-shapes video: the object's colour and how it moves, without a network.

Colour: the mean colour of the brightest object pixels, matched to the nearest palette colour (by direction
in RGB, so dim or anti-aliased pixels still read correctly). Motion: a least-squares line through the
object's centre of mass over frames gives the translation; the slope of log(area) gives growing/shrinking.
Rotation direction is not read here (the learned evaluator does that); a video whose object neither
translates nor scales reads as 'static or rotating'.
"""
import numpy as np

from vidgen_jax.data import moving_shapes

TRANSLATIONS = {  # motion phrase -> unit direction (x right, y down)
    "moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1),
    "moving up and left": (-1, -1), "moving up and right": (1, -1),
    "moving down and left": (-1, 1), "moving down and right": (1, 1),
}
STATIC = "static or rotating"


def _palette():
  names = list(moving_shapes.COLOURS)
  rgb = np.array([moving_shapes.COLOURS[n] for n in names], np.float32)
  return names, rgb / np.linalg.norm(rgb, axis=1, keepdims=True)


def read_colour(video: np.ndarray) -> str | None:
  """Nearest palette colour of the bright object pixels, or None for an empty (black) video."""
  v = video.astype(np.float32)
  bright = v.max(-1)
  sel = bright > max(96.0, 0.6 * bright.max())
  if sel.sum() < 2:
    return None
  mean = v[sel].mean(0)
  names, unit = _palette()
  return names[int(np.argmax(unit @ (mean / (np.linalg.norm(mean) + 1e-6))))]


def trajectory(video: np.ndarray):
  """Per-frame centre of mass (x, y) in pixels and object area (pixels above half the peak brightness)."""
  v = video.astype(np.float32).max(-1)
  t, h, w = v.shape
  thr = max(64.0, 0.5 * v.max())
  mask = (v > thr).astype(np.float32)
  area = mask.sum((1, 2))
  ys, xs = np.mgrid[0:h, 0:w]
  safe = np.maximum(area, 1.0)
  cx = (mask * xs).sum((1, 2)) / safe
  cy = (mask * ys).sum((1, 2)) / safe
  return np.stack([cx, cy], -1), area


def read_motion(video: np.ndarray) -> str | None:
  """The motion phrase the object's trajectory shows, STATIC, or None if there is no object."""
  centre, area = trajectory(video)
  t, h = video.shape[0], video.shape[1]
  if t < 2 or (area > 0).sum() < max(2, t // 2):
    return None
  frames = np.arange(t, dtype=np.float32)[area > 0]
  c, a = centre[area > 0], area[area > 0]
  slope = np.polyfit(frames, c, 1)[0] * (t - 1) / h        # displacement over the clip / frame side
  log_area_change = np.polyfit(frames, np.log(a), 1)[0] * (t - 1)
  dist = float(np.hypot(*slope))
  if dist >= 0.12:
    angle = np.arctan2(slope[1], slope[0])
    best, best_cos = None, -2.0
    for name, (dx, dy) in TRANSLATIONS.items():
      cos = np.cos(angle - np.arctan2(dy, dx))
      if cos > best_cos:
        best, best_cos = name, cos
    return best
  if log_area_change > 0.4:
    return "growing"
  if log_area_change < -0.4:
    return "shrinking"
  return STATIC


def motion_matches(prompt_motion: str, read: str | None) -> bool:
  if prompt_motion.startswith("rotating"):
    return read == STATIC
  return read == prompt_motion


def score(videos: np.ndarray, prompts) -> list[dict]:
  """Per-video read-out and agreement with its prompt."""
  rows = []
  for v, p in zip(videos, prompts):
    c, s, m = moving_shapes.parse_caption(p)
    colour, motion = list(moving_shapes.COLOURS)[c], moving_shapes.MOTIONS[m]
    read_c, read_m = read_colour(v), read_motion(v)
    rows.append({"prompt": p, "colour": read_c, "motion": read_m, "colour_ok": read_c == colour,
                 "motion_ok": motion_matches(motion, read_m), "rotation": motion.startswith("rotating")})
  return rows


def summarise(rows) -> dict:
  """Accuracies over rows; translation/scale motions and rotations counted separately."""
  if not rows:
    return {}
  measured = [r for r in rows if not r["rotation"]]
  out = {"n": len(rows), "colour_acc": float(np.mean([r["colour_ok"] for r in rows]))}
  if measured:
    out["motion_acc"] = float(np.mean([r["motion_ok"] for r in measured]))
    out["colour_and_motion_acc"] = float(np.mean([r["colour_ok"] and r["motion_ok"] for r in measured]))
  rot = [r for r in rows if r["rotation"]]
  if rot:
    out["rotation_reads_static_acc"] = float(np.mean([r["motion_ok"] for r in rot]))
  return out
