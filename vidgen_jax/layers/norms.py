"""Channel norms of the video-diffusion U-Net, channels-last.

Both normalise over the last (channel) axis only, with statistics computed in float32 whatever the compute
dtype, and carry a gain but no bias:

* `ChannelRMSNorm`: torch `F.normalize(x, dim=channels) * sqrt(C) * gamma`, i.e. x / max(||x||_2, 1e-12).
* `ChannelLayerNorm`: (x - mean) / sqrt(biased_var + eps) * gamma with eps 1e-5 (video-diffusion `LayerNorm`).
"""
import math

import flax.linen as nn
import jax.numpy as jnp


def _gain(module, features):
  init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
  return module.param("gamma", init, (features,), module.param_dtype)


class ChannelRMSNorm(nn.Module):
  """L2-normalise over channels, times sqrt(C) and a learned per-channel gain `gamma`."""
  eps: float = 1e-12
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    gamma = _gain(self, features)
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    y = x32 / jnp.maximum(norm, self.eps) * math.sqrt(features) * gamma.astype(jnp.float32)
    return y.astype(self.dtype)


class ChannelLayerNorm(nn.Module):
  """Layer norm over channels with biased variance and a gain only (no bias)."""
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = _gain(self, x.shape[-1])
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) / jnp.sqrt(var + self.eps) * gamma.astype(jnp.float32)
    return y.astype(self.dtype)
