"""Timestep embeddings and the learned T5-style relative position bias table."""
import math

import flax.linen as nn
import jax.numpy as jnp

from vidgen_jax.layers import position


def fourier_grid_embedding(height, width, num_freqs):
  """(H, W, 4 num_freqs) float32: [sin, cos](pi k y), [sin, cos](pi k x) for k = 1..num_freqs, where y and x
  are pixel centres normalised to (-1, 1), so the same frequencies describe any grid size."""
  if num_freqs < 1:
    raise ValueError(f"num_freqs must be >= 1, got {num_freqs}")
  k = jnp.arange(1, num_freqs + 1, dtype=jnp.float32) * math.pi
  ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2 - 1
  xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2 - 1
  fy = jnp.concatenate([jnp.sin(ys[:, None] * k), jnp.cos(ys[:, None] * k)], -1)   # (H, 2F)
  fx = jnp.concatenate([jnp.sin(xs[:, None] * k), jnp.cos(xs[:, None] * k)], -1)   # (W, 2F)
  return jnp.concatenate([jnp.broadcast_to(fy[:, None], (height, width, fy.shape[-1])),
                          jnp.broadcast_to(fx[None], (height, width, fx.shape[-1]))], -1)


def sinusoidal_embedding(x, dim):
  """(...) positions or timesteps -> (..., dim) float32 [sin | cos] embedding (video-diffusion SinusoidalPosEmb).

  Frequencies are exp(-log(10000) * i / (half - 1)) for i < half = dim // 2; timesteps are used unscaled.
  """
  half = dim // 2
  if half < 2:
    raise ValueError(f"sinusoidal embedding needs dim >= 4, got {dim}")
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000) / (half - 1)))
  angles = jnp.asarray(x, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class RelativePositionBias(nn.Module):
  """Bidirectional T5 bucketed relative position bias: n -> (heads, n, n) float32 added to attention logits.

  The table `relative_attention_bias` (num_buckets, heads) is torch's `relative_attention_bias.weight`.
  Entry [h, i, j] is the bias for query position i attending to key position j.
  """
  heads: int
  num_buckets: int = 32
  max_distance: int = 128
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, n):
    table = self.param(
        "relative_attention_bias",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("buckets", "heads")),
        (self.num_buckets, self.heads), self.param_dtype)
    buckets = position.t5_relative_position_bucket(
        position.relative_positions(n), bidirectional=True, num_buckets=self.num_buckets,
        max_distance=self.max_distance)
    values = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # (n, n, heads)
    return jnp.transpose(values, (2, 0, 1))
