"""Analytic read-out of a moving-shapes video: the object's colour and how it moves, without a network.

Colour: the mean colour of the brightest object pixels, matched to the nearest palette colour (by direction
in RGB, so dim or anti-aliased pixels still read correctly). Motion: a least-squares line through the
object's centre of mass over frames gives the translation; the slope of log(area) gives growing/shrinking.
Rotation direction is not read by `read_motion` (the learned evaluator does that); a video whose object
neither translates nor scales reads as 'static or rotating'. `rotation_per_frame` measures how fast and which
way the object turns between frames, for diagnosing rotations the evaluator reads as static.
"""
import numpy as np
from scipy import ndimage

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


def _bilinear(image: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
  """`image` (H, W) sampled at the (fractional) rows `sy` and columns `sx`; outside the frame reads 0."""
  h, w = image.shape
  padded = np.pad(image, 1)
  y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
  fy, fx = sy - y0, sx - x0

  def at(y, x):
    inside = (y >= -1) & (y <= h) & (x >= -1) & (x <= w)
    return np.where(inside, padded[np.clip(y + 1, 0, h + 1), np.clip(x + 1, 0, w + 1)], 0.0)
  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
          + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
  h, w = image.shape
  ys, xs = np.mgrid[0:h, 0:w]
  total = max(float(image.sum()), 1e-6)
  return float((image * ys).sum()) / total, float((image * xs).sum()) / total


def _foreground(image: np.ndarray) -> np.ndarray:
  """(H, W) in [0, 1]: how much each pixel of a brightness image (H, W) in [0, 1] belongs to the object.
  A linear ramp from the background (the median) to the object (the 99th percentile), kept only on the
  largest connected region over half way and the pixels next to it. Noise and speckle around the object then
  weigh nothing (objects here are 6-16 pixels wide: blurring would round their corners); a frame with less
  than 0.1 of contrast is empty."""
  background, top = float(np.median(image)), float(np.percentile(image, 99))
  if top - background < 0.1:
    return np.zeros_like(image)
  ramp = np.clip((image - background) / (top - background), 0.0, 1.0)
  regions, count = ndimage.label(ramp > 0.5)
  if count == 0:
    return np.zeros_like(image)
  largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(ramp), regions, range(1, count + 1))))
  return ramp * ndimage.binary_dilation(regions == largest, np.ones((3, 3), bool))


def _centred_and_turned(image: np.ndarray, degrees: float, centre: tuple[float, float]) -> np.ndarray:
  """`image` (H, W) moved so that `centre` (its centre of mass) is the frame's centre, then turned by
  `degrees` clockwise on screen about it (y points down, so the usual rotation matrix turns clockwise)."""
  h, w = image.shape
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  my, mx = centre
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  th = np.deg2rad(degrees)
  # Output pixel p (relative to the centre) shows the input at R(-θ) p, relative to the centre of mass.
  sx = np.cos(th) * (xs - cx) + np.sin(th) * (ys - cy) + mx
  sy = -np.sin(th) * (xs - cx) + np.cos(th) * (ys - cy) + my
  return _bilinear(image, sy, sx)


def rotation_per_frame(video: np.ndarray, max_degrees: float = 30.0, step: float = 1.5,
                       min_gain: float = 0.1) -> np.ndarray:
  """(T - 1,) degrees the object turns from each frame to the next, clockwise on screen positive.

  Each frame's brightness is first reduced to its object (`_foreground`: the background and noise off the
  object weigh nothing). Both frames are then centred on their centre of mass (so translation does not
  count), frame f is turned by every angle in [-max_degrees, max_degrees] in `step` increments, and the
  angle whose result is closest to frame f + 1 (squared error) is taken. A turn beyond max_degrees, or by a
  shape's symmetry period, cannot be told apart from a smaller one. A pair reads 0 unless the best turn
  lowers the error of turning by 0 by at least `min_gain` (a fraction): a still, empty, translating or
  scaling object, or a circle, whose turns all look alike. Moving-shapes rotations turn 60-120 degrees over
  a clip (7.5-15 per frame in 8 frames); on rendered 32-pixel clips the mean over a clip is within 0.3
  degrees of the true rate on average (3 at worst, for a small triangle), 0.8 with per-pixel noise of
  standard deviation 25/255 and 1.5 with 50 (the raw frames, without `_foreground`, read about 0 for every
  clip from 10 on).
  """
  v = np.stack([_foreground(f) for f in video.astype(np.float32).max(-1) / 255.0])
  angles = np.arange(-max_degrees, max_degrees + step / 2, step)
  centres = [_centre_of_mass(f) for f in v]   # each frame's once: it is a pair's source, then its target
  out = []
  for a, centre, b, b_centre in zip(v[:-1], centres[:-1], v[1:], centres[1:]):
    target = _centred_and_turned(b, 0.0, b_centre)
    errors = np.array([np.square(_centred_and_turned(a, th, centre) - target).sum() for th in angles])
    still = errors[len(angles) // 2]   # angle 0
    turned = errors.min() < (1.0 - min_gain) * still   # a turn must explain the change, not resampling noise
    out.append(float(angles[int(np.argmin(errors))]) if turned else 0.0)
  return np.array(out, np.float32)


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
