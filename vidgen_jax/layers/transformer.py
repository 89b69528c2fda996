"""Transformer blocks of phenaki-pytorch (C-ViViT, MaskGIT) in Flax, channels-last.

* `CosineAttention`: pre-LayerNorm, q/k l2-normalised and scaled by learned per-channel gains, logits times
  a fixed `scale` (8); optional causal mask with ALiBi bias; optional additive bias (e.g. the spatial
  `ContinuousPositionBias`); optional cross-attention to a context with learned null key/values.
* `FeedForward`: LayerNorm -> Dense(2 * inner) -> GEGLU -> Dense, inner = int(mult * 2/3 * dim).
* `PEG`: the position-generating depthwise 3x3x3 conv over (T, H, W). `causal=True` pads time on the past
  side only (2, 0), so a token never sees later frames. `reference_compat=True` reproduces phenaki-pytorch
  exactly as shipped, where the temporal transformer's PEG is built with causal=False and pads (1, 1): the
  encoder then leaks the next frame into every time step (research/anchors_pytorch.md 2.10). Only for
  loading its checkpoints.
* `ContinuousPositionBias`: SwinV2's MLP over log-spaced relative (dy, dx) offsets -> (heads, N, N).
* `Transformer`: depth x [PEG?, self-attention, cross-attention?, feed-forward], residual, final LayerNorm.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.layers import attention

_NEG = -jnp.finfo(jnp.float32).max


def alibi_slopes(heads: int) -> np.ndarray:
  """ALiBi head slopes (Press et al.): geometric for powers of two, interleaved otherwise."""
  def power_of_2(n):
    start = 2 ** (-(2 ** -(np.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if np.log2(heads).is_integer():
    return np.asarray(power_of_2(heads), np.float32)
  closest = 2 ** int(np.floor(np.log2(heads)))
  return np.asarray(power_of_2(closest) + power_of_2(2 * closest)[0::2][:heads - closest], np.float32)


def alibi_bias(heads: int, n: int):
  """(heads, n, n) bias −|i − j| * slope_h."""
  dist = np.abs(np.arange(n)[None, :] - np.arange(n)[:, None]).astype(np.float32)
  return jnp.asarray(-dist[None] * alibi_slopes(heads)[:, None, None])


def _l2norm(x):
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)   # finite gradient at 0


class CosineAttention(nn.Module):
  """Phenaki attention on x (..., N, C); `context` (..., M, Dc) makes it cross-attention."""
  heads: int = 8
  dim_head: int = 64
  causal: bool = False
  num_null_kv: int = 0
  scale: float = 8.0

  @nn.compact
  def __call__(self, x, context=None, bias=None, context_mask=None):
    h, d = self.heads, self.dim_head
    x = nn.LayerNorm(name="norm")(x)
    kv_input = x if context is None else nn.LayerNorm(name="context_norm")(context)
    q = attention.dense(h * d, ("embed", "heads"), name="to_q")(x).reshape(*x.shape[:-1], h, d)
    kv = attention.dense(2 * h * d, ("embed", "heads"), name="to_kv")(kv_input)
    k, v = (a.reshape(*kv_input.shape[:-1], h, d) for a in jnp.split(kv, 2, axis=-1))
    mask = None
    if context_mask is not None:
      mask = context_mask[..., None, None, :]          # (..., 1, 1, M)
    if self.num_null_kv:
      null = self.param("null_kv", nn.initializers.normal(1.0), (2, self.num_null_kv, h, d))
      lead = k.shape[:-3]
      k = jnp.concatenate([jnp.broadcast_to(null[0], lead + null.shape[1:]), k], axis=-3)
      v = jnp.concatenate([jnp.broadcast_to(null[1], lead + null.shape[1:]), v], axis=-3)
      if mask is not None:
        mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (self.num_null_kv,), bool), mask], axis=-1)
      if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(self.num_null_kv, 0)])
    q = _l2norm(q) * self.param("q_scale", nn.initializers.ones, (d,))
    k = _l2norm(k) * self.param("k_scale", nn.initializers.ones, (d,))
    n, m = q.shape[-3], k.shape[-3]
    if self.causal:
      alibi = alibi_bias(h, n)
      bias = alibi if bias is None else bias + alibi
      causal = jnp.tril(jnp.ones((n, m), bool), k=m - n)
      mask = causal if mask is None else mask & causal
    out = attention.dot_product_attention(q * self.scale, k, v, bias=bias, mask=mask)
    return attention.dense(x.shape[-1], ("heads", "embed"), name="to_out")(out.reshape(*x.shape[:-1], h * d))


class FeedForward(nn.Module):
  mult: float = 4.0

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    inner = int(self.mult * 2 / 3 * dim)
    h = attention.dense(2 * inner, ("embed", "mlp"), name="proj_in")(nn.LayerNorm(name="norm")(x))
    a, gate = jnp.split(h, 2, axis=-1)
    return attention.dense(dim, ("mlp", "embed"), name="proj_out")(a * nn.gelu(gate, approximate=False))


class PEG(nn.Module):
  """Depthwise 3x3x3 conv on (B, T, H, W, C) tokens (see the module docstring for the padding modes)."""
  causal: bool = True
  reference_compat: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    time_pad = (1, 1) if self.reference_compat or not self.causal else (2, 0)
    x = jnp.pad(x, [(0, 0), time_pad, (1, 1), (1, 1), (0, 0)])
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 3, 1, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "VALID", dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
                                     feature_group_count=c)
    return y + bias


class ContinuousPositionBias(nn.Module):
  """(heads, H*W, H*W) bias from an MLP over sign(d) * log(|d| + 1) of every (dy, dx) offset."""
  heads: int
  dim: int = 64
  layers: int = 2

  @nn.compact
  def __call__(self, height: int, width: int):
    pos = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), -1).reshape(-1, 2)
    rel = (pos[:, None, :] - pos[None, :, :]).astype(np.float32)
    h = jnp.asarray(np.sign(rel) * np.log(np.abs(rel) + 1))
    for i in range(self.layers):
      h = nn.leaky_relu(nn.Dense(self.dim, name=f"mlp_{i}")(h), 0.1)
    return jnp.transpose(nn.Dense(self.heads, name="to_heads")(h), (2, 0, 1))


class Transformer(nn.Module):
  """depth x [PEG?, self-attention, cross-attention?, FF] on (..., N, C), then a LayerNorm.

  `peg` needs `video_shape` (B, T, H, W) of the tokens so that (..., N, C) can be laid out as a video: the
  caller passes tokens in (b, t, h, w) order flattened any way it documents through `to_video`/`from_video`.
  """
  depth: int
  heads: int = 8
  dim_head: int = 64
  causal: bool = False
  peg: bool = False
  peg_causal: bool = True
  reference_compat: bool = False
  cross_attention: bool = False
  num_null_kv: int = 2
  ff_mult: float = 4.0

  @nn.compact
  def __call__(self, x, *, bias=None, context=None, context_mask=None, to_video=None, from_video=None):
    for i in range(self.depth):
      if self.peg:
        x = x + from_video(PEG(causal=self.peg_causal, reference_compat=self.reference_compat,
                               name=f"layer_{i}_peg")(to_video(x)))
      x = x + CosineAttention(self.heads, self.dim_head, causal=self.causal, name=f"layer_{i}_attn")(x, bias=bias)
      if self.cross_attention and context is not None:
        x = x + CosineAttention(self.heads, self.dim_head, num_null_kv=self.num_null_kv,
                                name=f"layer_{i}_cross_attn")(x, context=context, context_mask=context_mask)
      x = x + FeedForward(self.ff_mult, name=f"layer_{i}_ff")(x)
    return nn.LayerNorm(use_bias=False, name="norm_out")(x)
