"""The moving-shapes evaluator: a small Flax video classifier reading colour, shape and motion.

It is trained only on procedural clips (`eval/evaluator_train.py`, `vidgen evaluator train`), never on
generated ones, and its weights ship with the package (`eval/assets/shapes_evaluator.safetensors`), so every
evaluation of every model family is scored by the same network. If the file is missing it is rebuilt on
first use (deterministically, a few minutes on a CPU) and cached.

Input: uint8 videos (N, 8, H, W, 3), H = W a multiple of 32 (area-downsampled) or a divisor (upsampled). Longer videos
are scored segment by segment (`segments`). Motion has one class more than the data set: "static", learned
from frozen clips, so a video whose object does not move reads as static instead of as an arbitrary motion.

Architecture (ShapesClassifier): a per-frame conv encoder, frames stacked on channels for motion, pooled
into a 128-wide feature layer (what the Fréchet distance is computed on) and three linear heads.
"""
import functools
import json
import logging
import os
import pathlib

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as st_numpy

from vidgen_jax.data import moving_shapes

log = logging.getLogger("vidgen.evaluator")

NUM_FRAMES = 8
IMAGE_SIZE = 32
STATIC = "static"
COLOURS = moving_shapes.COLOUR_NAMES
SHAPES = moving_shapes.SHAPES
MOTIONS = moving_shapes.MOTIONS + (STATIC,)
ATTRIBUTES = ("colour", "shape", "motion")
CLASSES = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}
ASSET = pathlib.Path(__file__).parent / "assets" / "shapes_evaluator.safetensors"


class ShapesClassifier(nn.Module):
  """(B, 8, 32, 32, 3) float in [-1, 1] -> (features (B, feature_dim), {attribute: logits}).

  A per-frame 2D conv encoder (shared over frames) reads appearance at 8x8; its maps of all frames are then
  stacked on the channel axis, where two more convs see displacement, growth and rotation between frames.
  Features: [motion path mean+max pooled ; appearance path max over space, mean over frames].
  """
  width: int = 32
  feature_dim: int = 128

  @nn.compact
  def __call__(self, video):
    b, t, h, w, c = video.shape
    w0 = self.width
    x = video.reshape(b * t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(
        b * t, h // 2, w // 2, 4 * c)  # space-to-depth 2: convs run at 16x16
    for i, (features, stride) in enumerate(((w0, 1), (w0, 2), (w0, 1))):
      x = nn.gelu(nn.Conv(features, (3, 3), strides=stride, padding=1, name=f"frame_conv{i}")(x))
    _, fh, fw, fc = x.shape
    appearance = x.reshape(b, t, fh * fw, fc).max(2).mean(1)
    y = nn.Dense(w0 // 2, name="frame_proj")(x).reshape(b, t, fh, fw, w0 // 2)
    y = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(b, fh, fw, t * (w0 // 2))
    for i, (features, stride) in enumerate(((3 * w0, 1), (3 * w0, 2))):
      y = nn.gelu(nn.Conv(features, (3, 3), strides=stride, padding=1, name=f"time_conv{i}")(y))
    pooled = jnp.concatenate([y.mean((1, 2)), y.max((1, 2)), appearance], axis=-1)
    feats = nn.gelu(nn.LayerNorm(name="feature_norm")(nn.Dense(self.feature_dim, name="features")(pooled)))
    logits = {a: nn.Dense(len(CLASSES[a]), name=f"{a}_head")(feats) for a in ATTRIBUTES}
    return feats, logits


def preprocess(videos) -> np.ndarray:
  """uint8 (N, 8, H, W, 3) -> float32 (N, 8, 32, 32, 3) in [-1, 1] (area-averaged or pixel-repeated)."""
  v = np.asarray(videos)
  if v.ndim == 4:
    v = v[None]
  if v.ndim != 5 or v.shape[-1] != 3:
    raise ValueError(f"videos must be (N, T, H, W, 3), got {v.shape}")
  n, t, h, w, _ = v.shape
  if t != NUM_FRAMES:
    raise ValueError(f"the evaluator reads {NUM_FRAMES}-frame clips, got {t} frames; score longer videos "
                     "segment by segment (evaluator.segments)")
  if h != w or (h % IMAGE_SIZE and IMAGE_SIZE % h):
    raise ValueError(f"frames must be square with a side that divides or is a multiple of {IMAGE_SIZE}, "
                     f"got {h}x{w}")
  x = v.astype(np.float32)
  if h > IMAGE_SIZE:
    k = h // IMAGE_SIZE
    x = x.reshape(n, t, IMAGE_SIZE, k, IMAGE_SIZE, k, 3).mean((3, 5))
  elif h < IMAGE_SIZE:
    k = IMAGE_SIZE // h
    x = np.repeat(np.repeat(x, k, axis=2), k, axis=3)
  return x / 127.5 - 1.0


def segments(video, length: int = NUM_FRAMES) -> list[np.ndarray]:
  """Consecutive non-overlapping `length`-frame segments of one (T, H, W, 3) video (a trailing rest dropped)."""
  video = np.asarray(video)
  if video.shape[0] < length:
    raise ValueError(f"a video of {video.shape[0]} frames has no {length}-frame segment")
  return [video[i:i + length] for i in range(0, video.shape[0] - length + 1, length)]


class Evaluator:
  """Reads colour, shape and motion (and evaluator features) from uint8 videos."""

  def __init__(self, params, width: int = 32, feature_dim: int = 128, meta: dict | None = None,
               batch_size: int = 256):
    self.params = params
    self.model = ShapesClassifier(width=width, feature_dim=feature_dim)
    self.meta = dict(meta or {})
    self.batch_size = batch_size
    self._apply = jax.jit(self._forward)

  def _forward(self, params, x):
    feats, logits = self.model.apply({"params": params}, x)
    return feats, {a: jax.nn.softmax(l) for a, l in logits.items()}

  def run(self, videos) -> tuple[np.ndarray, dict]:
    """(features (N, feature_dim), {attribute: probabilities (N, classes)}), in fixed-size batches."""
    x = preprocess(videos)
    feats, probs = [], {a: [] for a in ATTRIBUTES}
    for i in range(0, len(x), self.batch_size):
      part = x[i:i + self.batch_size]
      pad = self.batch_size - len(part) if len(x) > self.batch_size else 0
      part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)]) if pad else part
      f, p = jax.device_get(self._apply(self.params, part))
      feats.append(f[:len(part) - pad])
      for a in ATTRIBUTES:
        probs[a].append(p[a][:len(part) - pad])
    return np.concatenate(feats), {a: np.concatenate(probs[a]) for a in ATTRIBUTES}

  def read(self, videos) -> list[dict]:
    """Per video: {attribute: class name, attribute + '_p': its probability}."""
    return readings_from(self.run(videos)[1])

  def features(self, videos) -> np.ndarray:
    return self.run(videos)[0]


def readings_from(probs: dict) -> list[dict]:
  """{attribute: (N, classes) probabilities} -> per video {attribute: name, attribute + '_p': probability}."""
  rows = []
  for i in range(len(probs["colour"])):
    row = {}
    for a in ATTRIBUTES:
      k = int(np.argmax(probs[a][i]))
      row[a], row[a + "_p"] = CLASSES[a][k], float(probs[a][i, k])
    rows.append(row)
  return rows


def save(path, params, *, width: int, feature_dim: int, meta: dict):
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  info = {"width": str(width), "feature_dim": str(feature_dim), "meta": json.dumps(meta)}
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  st_numpy.save_file(flat, str(tmp), metadata=info)
  os.replace(tmp, path)


def load(path) -> Evaluator:
  from safetensors import safe_open
  with safe_open(str(path), framework="numpy") as f:
    info = f.metadata() or {}
    flat = {k: f.get_tensor(k) for k in f.keys()}
  if "width" not in info:
    raise ValueError(f"{path} is not a vidgen shapes-evaluator file (no 'width' metadata)")
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
  return Evaluator(params, width=int(info["width"]), feature_dim=int(info["feature_dim"]),
                   meta=json.loads(info.get("meta", "{}")))


def _cache_path() -> pathlib.Path:
  root = os.environ.get("VIDGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vidgen_jax")
  return pathlib.Path(root) / ASSET.name


@functools.lru_cache(maxsize=1)
def default_evaluator() -> Evaluator:
  """The shipped evaluator; rebuilt with the default recipe (and cached) if the package file is missing."""
  for path in (ASSET, _cache_path()):
    if path.exists():
      return load(path)
  from vidgen_jax.eval import evaluator_train
  log.warning("%s is missing: rebuilding the evaluator (deterministic, a few minutes) into %s", ASSET,
              _cache_path())
  evaluator_train.build(_cache_path())
  return load(_cache_path())
