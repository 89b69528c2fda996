"""The tokenizer's frame discriminator (phenaki-pytorch's 2-D StyleGAN-like design), channels-last.

Frames (N, H, W, C) in [0, 1] -> one logit per frame. log2(min(H, W)) − 2 residual blocks, each
(res + net) / sqrt(2) with res = 1x1 conv + 2x average-pool and net = [3x3 conv, LeakyReLU(0.1)] x 2 +
2x average-pool; widths 4·base·2^i capped at 512; then 3x3 conv, LeakyReLU, flatten, Dense(1).
(The reference downsamples by space-to-depth + 1x1 conv; average pooling is the same linear family with
fewer parameters. Rectangular frames work.) It judges single frames, as the reference does; the paper's
3-D discriminator is not reproduced.
"""
import math

import flax.linen as nn
import jax.numpy as jnp


def _conv(features, kernel, name):
  return nn.Conv(features, (kernel, kernel), padding="SAME", name=name,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)))


def _pool(x):
  return nn.avg_pool(x, (2, 2), (2, 2))


class FrameDiscriminator(nn.Module):
  base_dim: int = 16
  max_dim: int = 512

  @nn.compact
  def __call__(self, frames):
    if frames.ndim != 4:
      raise ValueError(f"frames must be (N, H, W, C), got {frames.shape}")
    num_layers = max(int(math.log2(min(frames.shape[1:3]))) - 2, 1)
    x = frames * 2.0 - 1.0
    for i in range(num_layers):
      width = min(4 * self.base_dim * 2**i, self.max_dim)
      res = _pool(_conv(width, 1, f"block_{i}_res")(x))
      h = nn.leaky_relu(_conv(width, 3, f"block_{i}_conv1")(x), 0.1)
      h = _pool(nn.leaky_relu(_conv(width, 3, f"block_{i}_conv2")(h), 0.1))
      x = (res + h) / math.sqrt(2)
    x = nn.leaky_relu(_conv(x.shape[-1], 3, "final_conv")(x), 0.1)
    return nn.Dense(1, name="to_logits")(x.reshape(x.shape[0], -1))[:, 0]
