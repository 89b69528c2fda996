"""Position encodings shared by the U-Net's temporal attention, the T5 text encoder and the phenaki transformers
(ALiBi slopes and biases; log-spaced relative grid offsets for the continuous position bias)."""
import math

import jax.numpy as jnp
import numpy as np


def t5_relative_position_bucket(relative_position, *, bidirectional=True, num_buckets=32, max_distance=128):
  """T5's bucketing of relative positions (memory_position - query_position) into integer buckets.

  Half the buckets (per direction when bidirectional) are exact for small distances; the rest grow
  logarithmically up to `max_distance`, beyond which everything shares the last bucket. Same arithmetic as
  Hugging Face T5 and video-diffusion-pytorch's RelativePositionBias.
  """
  relative_position = jnp.asarray(relative_position)
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(relative_position.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Guard log(0): the value is discarded by the `where` for n < max_exact anyway.
  n_float = jnp.maximum(n, 1).astype(jnp.float32)
  val_if_large = max_exact + (
      jnp.log(n_float / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(relative_position.dtype)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


def relative_positions(q_len, k_len=None):
  """(q_len, k_len) int32 matrix of key_position - query_position."""
  k_len = q_len if k_len is None else k_len
  return jnp.arange(k_len, dtype=jnp.int32)[None, :] - jnp.arange(q_len, dtype=jnp.int32)[:, None]


def rotary_frequencies(dim, theta=10000.0):
  """(dim // 2,) float32 inverse frequencies 1 / theta**(2i / dim) of a "lang" rotary embedding."""
  exponents = jnp.arange(0, dim, 2, dtype=jnp.float32)[: dim // 2] / dim
  return 1.0 / (theta**exponents)


def rotary_angles(positions, dim, theta=10000.0):
  """(..., dim) float32 rotation angles, each frequency repeated for an adjacent (interleaved) channel pair.

  `positions` is an array of (possibly fractional) positions; channel 2i and 2i+1 rotate together by
  position * rotary_frequencies(dim)[i], as in rotary-embedding-torch.
  """
  angles = jnp.asarray(positions, jnp.float32)[..., None] * rotary_frequencies(dim, theta)
  return jnp.repeat(angles, 2, axis=-1)


def axial_rotary_angles(shape, dims, theta=10000.0):
  """(prod(shape), sum(dims)) angles for tokens of a grid `shape` flattened row-major (e.g. (T, H, W)).

  Axis a gets its own `dims[a]` (even) rotary channels, consecutive in axis order, rotating by that axis's
  integer coordinate; the dot product of two rotated vectors then depends on their offset along every axis.
  """
  if len(shape) != len(dims) or any(d % 2 for d in dims):
    raise ValueError(f"need one even rotary dim per axis, got shape={shape} dims={dims}")
  grids = jnp.meshgrid(*[jnp.arange(n) for n in shape], indexing="ij")
  parts = [rotary_angles(g.reshape(-1), d, theta) for g, d in zip(grids, dims) if d]
  return jnp.concatenate(parts, axis=-1)


def _rotate_adjacent_pairs(x):
  """Maps each channel pair (a, b) to (-b, a): the 90-degree rotation of the interleaved layout."""
  pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1)
  return rotated.reshape(x.shape)


def apply_rotary(x, angles):
  """Rotates the first angles.shape[-1] channels of `x` by `angles`; the remaining channels pass through.

  `angles` (from `rotary_angles`) must broadcast against x[..., :rot_dim]; for x laid out as
  (..., seq, heads, dim_head) pass angles[:, None, :]. Computed in float32, returned in x's dtype.
  """
  rot_dim = angles.shape[-1]
  if rot_dim > x.shape[-1]:
    raise ValueError(f"rotary dim {rot_dim} exceeds the feature dim {x.shape[-1]}")
  x32 = x.astype(jnp.float32)
  head, tail = x32[..., :rot_dim], x32[..., rot_dim:]
  head = head * jnp.cos(angles) + _rotate_adjacent_pairs(head) * jnp.sin(angles)
  tail = jnp.broadcast_to(tail, head.shape[:-1] + tail.shape[-1:])   # angles may add leading axes
  return jnp.concatenate([head, tail], axis=-1).astype(x.dtype)


def alibi_slopes(heads: int) -> np.ndarray:
  """ALiBi head slopes (Press et al.): geometric 2^(-8i/n) for powers of two, interleaved otherwise."""
  def power_of_2(n):
    start = 2 ** (-(2 ** -(np.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if np.log2(heads).is_integer():
    return np.asarray(power_of_2(heads), np.float32)
  closest = 2 ** int(np.floor(np.log2(heads)))
  return np.asarray(power_of_2(closest) + power_of_2(2 * closest)[0::2][:heads - closest], np.float32)


def alibi_bias(heads: int, q_len: int, k_len: int | None = None) -> np.ndarray:
  """(heads, q_len, k_len) bias -|i - j| * slope_h, the queries aligned with the last q_len keys."""
  k_len = q_len if k_len is None else k_len
  qpos = np.arange(k_len - q_len, k_len)
  dist = np.abs(np.arange(k_len)[None, :] - qpos[:, None]).astype(np.float32)
  return -dist[None] * alibi_slopes(heads)[:, None, None]


def relative_log_positions(shape) -> np.ndarray:
  """(N, N, len(shape)) float32 sign(d) * log(|d| + 1) of the offsets p_i - p_j of a row-major grid `shape`."""
  pos = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
  rel = (pos[:, None, :] - pos[None, :, :]).astype(np.float32)
  return np.sign(rel) * np.log(np.abs(rel) + 1.0)
