"""The tokenizer's frame discriminator, channels-last: frames (..., H, W, C) in [0, 1] -> one logit per frame.

Design: phenaki-pytorch's 2-D StyleGAN-like discriminator (its `Discriminator`), which judges single frames;
the paper's 3-D video discriminator is not reproduced (the reference does not have one either, caveat
2.10-g of research/anchors_pytorch.md). With m = min(H, W) and L = log2(m) − 2:

* L + 1 residual blocks of widths 4·base·2^i (i = 0..L), capped at max_dim; every block but the last halves
  H and W, so the last feature map is 4x4 for a square frame and 4x8 for a 16x32 one. Rectangular frames
  work; odd sides are floored at each halving, like a VALID stride-2 conv.
* Block: (res + net) / sqrt(2), net = [3x3 conv, LeakyReLU(0.1)] × 2 then a 2x2 stride-2 conv, which is
  exactly the reference's space-to-depth + 1x1 conv. The reference's residual path is a stride-2 1x1 conv,
  which drops 3 of every 4 pixels; here it is a 2x2 average pool then the 1x1 conv (the same linear family,
  without the aliasing, as StyleGAN2's residual discriminator does).
* Self-attention at the blocks whose input side min(h, w) is in `attn_resolutions` (the reference's
  `attn_res_layers`, default (16,)): residual x + Attention(LayerNorm(x)) over the block's output positions.
  The attention is the library's scaled dot-product `Attention` (the reference uses cosine-sim attention).
* Head: 3x3 conv, LeakyReLU, flatten, Dense(1). The flatten makes the parameters depend on the frame size
  used at init, as in the reference.

Inputs are mapped to [-1, 1] first (x·2 − 1; an affine change the first conv could learn, done so the
initial activations are centred). No normalisation layer depends on the batch, so every logit depends on
its own frame only, which `losses.gan.gradient_penalty` relies on.
"""
import math

import flax.linen as nn

from vidgen_jax.layers import norms
from vidgen_jax.layers.attention import Attention, dense
from vidgen_jax.layers.conv import PointwiseConv, SpaceConv


def num_downsamples(height: int, width: int) -> int:
  """L = log2(min(H, W)) − 2 halvings (floored), so a square frame ends at 4x4; at least 0."""
  return max(int(math.log2(min(height, width))) - 2, 0)


def block_widths(height: int, width: int, base_dim: int, max_dim: int = 512) -> tuple:
  """Output width of each of the L + 1 blocks: 4·base·2^i capped at max_dim."""
  return tuple(min(4 * base_dim * 2**i, max_dim) for i in range(num_downsamples(height, width) + 1))


def _avg_pool2(x):
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class DiscriminatorBlock(nn.Module):
  """(res + net) / sqrt(2) on (N, H, W, C); halves H and W when `downsample`."""
  features: int
  downsample: bool = True

  @nn.compact
  def __call__(self, x):
    res = _avg_pool2(x) if self.downsample else x
    res = PointwiseConv(self.features, name="conv_res")(res)
    h = nn.leaky_relu(SpaceConv(self.features, (3, 3), name="conv1")(x), 0.1)
    h = nn.leaky_relu(SpaceConv(self.features, (3, 3), name="conv2")(h), 0.1)
    if self.downsample:
      h = SpaceConv(self.features, (2, 2), strides=(2, 2), padding=0, name="downsample")(h)
    return (res + h) * (1.0 / math.sqrt(2.0))


class FrameDiscriminator(nn.Module):
  """Frames (..., H, W, C) in [0, 1] -> logits (...): one per frame, leading axes kept.

  base_dim is the reference's `discr_base_dim` (first block width 4·base_dim). min(H, W) must be >= 4.
  """
  base_dim: int = 16
  max_dim: int = 512
  attn_resolutions: tuple = (16,)
  attn_heads: int = 8
  attn_dim_head: int = 64

  @nn.compact
  def __call__(self, frames):
    if frames.ndim < 4:
      raise ValueError(f"frames must be (..., H, W, C) with at least one leading axis, got {frames.shape}")
    lead, (height, width, _) = frames.shape[:-3], frames.shape[-3:]
    if min(height, width) < 4:
      raise ValueError(f"frames must be at least 4x4, got {height}x{width}")
    x = frames.reshape((-1,) + frames.shape[-3:]) * 2.0 - 1.0
    widths = block_widths(height, width, self.base_dim, self.max_dim)
    for i, features in enumerate(widths):
      side = min(x.shape[1:3])
      x = DiscriminatorBlock(features, downsample=i < len(widths) - 1, name=f"block_{i}")(x)
      if side in self.attn_resolutions:
        n, h, w, c = x.shape
        tokens = x.reshape(n, h * w, c)
        normed = norms.ChannelLayerNorm(name=f"attn_{i}_norm")(tokens)
        tokens = tokens + Attention(self.attn_heads, self.attn_dim_head, name=f"attn_{i}")(normed)
        x = tokens.reshape(n, h, w, c)
    x = nn.leaky_relu(SpaceConv(x.shape[-1], (3, 3), name="final_conv")(x), 0.1)
    logits = dense(1, ("embed", None), use_bias=True, name="to_logits")(x.reshape(x.shape[0], -1))
    return logits[:, 0].reshape(lead)
