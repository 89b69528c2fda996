"""Transformer blocks of phenaki-pytorch (C-ViViT, MaskGIT, Token-Critic) in Flax, channels-last.

* `Attention`: phenaki's cosine-similarity attention. Pre-LayerNorm (gain only), q and k l2-normalised and
  multiplied by learned per-channel gains `q_scale`/`k_scale`, logits times a fixed `scale` (8). Options:
  causal (ALiBi bias + causal mask), an additive bias (e.g. `ContinuousPositionBias`), a key mask,
  cross-attention to a layer-normed context, learned null key/values prepended to the keys (always
  attendable, so a fully masked context is still well defined: the unconditional branch of guidance).
* `FeedForward`: LayerNorm -> Dense(2 * inner, no bias) -> GEGLU (x * gelu(gate)) -> Dropout -> Dense,
  inner = int(mult * (2 / 3) * dim).
* `PEG`: position-generating depthwise 3x3x3 conv on a (B, T, H, W, C) token video. `causal=True` pads time
  on the past side only (2, 0): step t sees steps t-2..t and never a later one. `causal=False` pads (1, 1).
* `ContinuousPositionBias`: SwinV2's MLP over the log-spaced relative offsets sign(d) * log(|d| + 1) of every
  pair of positions of a grid (2-D (dy, dx) for C-ViViT's spatial attention, 3-D for MaskGIT) -> (heads, N, N).
* `Transformer`: depth x [PEG?, self-attention, cross-attention?, feed-forward], all residual, then a
  gain-only LayerNorm. Causal or bidirectional, with or without cross-attention, with or without PEG.

How the PEG sees a token sequence. The stack works on sequences (..., N, C); the PEG needs them as a video.
The caller either passes `to_video`/`from_video` (its own exact layout) or `video_shape` (B, T, H, W), which
reshapes (B', N, C) to (B, T, H, W, C) as a plain reshape, as phenaki-pytorch does. The plain reshape is
right for (B, T*H*W, C) tokens in (t, h, w) order (MaskGIT), but phenaki-pytorch also uses it on C-ViViT's
temporal sequences (B*H*W, T, C), whose memory order is (b, h, w, t): the conv then mixes scrambled
positions, and later frames leak into earlier time steps even though its padding is causal
(research/anchors_pytorch.md 2.10-a, issue #42). C-ViViT passes a correct `to_video` by default and the plain
reshape only with `reference_compat=True`, to reproduce outputs of phenaki-pytorch checkpoints.

`reference_compat=True` also reproduces a second quirk of phenaki-pytorch's `Attention`: self-attention keys
and values are projected from the un-normalised input (only the queries see the LayerNorm, because
`kv_input = default(context, x)` is taken before `x = self.norm(x)`). The default is the usual pre-norm.

Randomness: dropout only (`attn_dropout`, `ff_dropout`), drawn from the flax rng stream 'dropout' when the
call has `deterministic=False`; with the default rates of 0 no rng is needed.

torch -> Flax parameter map (torch `Transformer`, per layer i; Linear weights transpose to kernels):
  layers.i.0.dsconv.weight (C, 1, 3, 3, 3)  -> layer_i_peg/kernel = w[:, 0].transpose(1, 2, 3, 0); .bias -> bias
  layers.i.1.{to_q, to_out}.weight          -> layer_i_attn/{to_q, to_out}/kernel = w.T
  layers.i.1.to_kv.weight (2hd, C)          -> layer_i_attn/to_kv/kernel = w.T (columns [k | v], head-major)
  layers.i.1.{q_scale, k_scale}              -> layer_i_attn/{q_scale, k_scale}
  layers.i.1.norm.gamma                      -> layer_i_attn/norm/gamma   (beta buffers are zeros: dropped)
  layers.i.2.*                               -> layer_i_cross_attn/* as above, plus context_norm/gamma and
  layers.i.2.null_kv (h, 2n, d)              -> layer_i_cross_attn/null_kv (2, n, h, d)
                                                = w.reshape(h, n, 2, d).transpose(2, 1, 0, 3)
  layers.i.3.0.{weight, bias}                -> layer_i_ff/norm/{scale, bias}
  layers.i.3.1.weight / layers.i.3.4.weight  -> layer_i_ff/proj_in/kernel, layer_i_ff/proj_out/kernel (.T)
  norm_out.gamma                             -> norm_out/gamma
Self-attention's empty null_kv (h, 0, d) and its dead context_norm.gamma have no counterpart.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.layers import attention, norms, position

TORCH_LAYER_NORM_EPS = 1e-5


def layer_norm(name: str, *, use_bias: bool = True, dtype=jnp.float32) -> nn.LayerNorm:
  """torch's nn.LayerNorm (eps 1e-5, exact variance) with a logically partitioned gain 'scale' and 'bias'."""
  return nn.LayerNorm(epsilon=TORCH_LAYER_NORM_EPS, use_bias=use_bias, use_fast_variance=False, dtype=dtype,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), name=name)


def l2norm(x):
  """x / ||x|| over the last axis (torch F.normalize), with a finite gradient at x = 0."""
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


def causal_mask(q_len: int, k_len: int | None = None) -> np.ndarray:
  """(q_len, k_len) bool, True where query i may see key j (j <= i, queries aligned with the last keys)."""
  k_len = q_len if k_len is None else k_len
  return np.tril(np.ones((q_len, k_len), bool), k=k_len - q_len)


def _attend(q, k, v, *, bias, mask, rate: float, deterministic: bool):
  """attention.dot_product_attention, or the same with dropout on the probabilities (rng 'dropout')."""
  if rate == 0.0 or deterministic:
    return attention.dot_product_attention(q, k, v, bias=bias, mask=mask, normalize_last=True)
  return attention.dot_product_attention(
      q, k, v, bias=bias, mask=mask, probs_fn=lambda p: nn.Dropout(rate)(p, deterministic=False))


class Attention(nn.Module):
  """Phenaki attention on x (..., N, C); a `context` (..., M, Dc) makes it cross-attention.

  `bias` broadcasts against the logits (..., heads, N, M) (e.g. (heads, N, N)); `mask` (..., M) bool marks the
  keys that may be attended (True). Null key/values are always attendable and get zero bias.
  """
  heads: int = 8
  dim_head: int = 64
  causal: bool = False
  num_null_kv: int = 0
  scale: float = 8.0
  dropout: float = 0.0
  kv_from_unnormed_input: bool = False     # phenaki-pytorch's self-attention quirk (module docstring)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, *, bias=None, mask=None, deterministic: bool = True):
    h, d, dim = self.heads, self.dim_head, x.shape[-1]
    dense = lambda f, axes, name: attention.dense(f, axes, name=name, dtype=self.dtype, flat=True)
    normed = norms.ChannelLayerNorm(dtype=self.dtype, name="norm")(x)
    if context is not None:
      kv_input = norms.ChannelLayerNorm(dtype=self.dtype, name="context_norm")(context)
    else:
      kv_input = x.astype(self.dtype) if self.kv_from_unnormed_input else normed
    q = dense(h * d, ("embed", "heads"), "to_q")(normed).reshape(*x.shape[:-1], h, d)
    kv = dense(2 * h * d, ("embed", "heads"), "to_kv")(kv_input)
    k, v = (t.reshape(*kv_input.shape[:-1], h, d) for t in jnp.split(kv, 2, axis=-1))
    if mask is not None:
      mask = mask.astype(bool)[..., None, None, :]                   # (..., 1, 1, M)
    if self.num_null_kv:
      null = self.param("null_kv", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                (None, None, "heads", None)),
                        (2, self.num_null_kv, h, d)).astype(self.dtype)
      lead = k.shape[:-3]
      k = jnp.concatenate([jnp.broadcast_to(null[0], lead + null.shape[1:]), k], axis=-3)
      v = jnp.concatenate([jnp.broadcast_to(null[1], lead + null.shape[1:]), v], axis=-3)
      if mask is not None:
        mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (self.num_null_kv,), bool), mask], axis=-1)
      if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(self.num_null_kv, 0)])
    gain = lambda name: self.param(name, nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (d,))
    q = l2norm(q.astype(jnp.float32)) * gain("q_scale")
    k = l2norm(k.astype(jnp.float32)) * gain("k_scale")
    n, m = q.shape[-3], k.shape[-3]
    if self.causal:
      alibi = position.alibi_bias(h, n, m)
      bias = alibi if bias is None else bias + alibi
      mask = causal_mask(n, m) if mask is None else mask & causal_mask(n, m)
    out = _attend((q * self.scale).astype(self.dtype), k.astype(self.dtype), v, bias=bias, mask=mask,
                  rate=self.dropout, deterministic=deterministic)
    return dense(dim, ("heads", "embed"), "to_out")(out.reshape(*x.shape[:-1], h * d))


class FeedForward(nn.Module):
  """LayerNorm -> Dense(2 * inner) -> GEGLU -> Dropout -> Dense, inner = int(mult * (2 / 3) * dim)."""
  mult: float = 4.0
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    dim = x.shape[-1]
    inner = int(self.mult * (2 / 3) * dim)
    y = layer_norm("norm", dtype=self.dtype)(x)
    y = attention.dense(2 * inner, ("embed", "mlp"), name="proj_in", dtype=self.dtype, flat=True)(y)
    a, gate = jnp.split(y, 2, axis=-1)
    y = nn.Dropout(self.dropout)(a * nn.gelu(gate, approximate=False), deterministic=deterministic)
    return attention.dense(dim, ("mlp", "embed"), name="proj_out", dtype=self.dtype, flat=True)(y)


def depthwise_conv3(x, kernel):
  """'VALID' depthwise 3x3x3 conv of x (B, T, H, W, C) with kernel (3, 3, 3, C) -> (B, T-2, H-2, W-2, C).

  The same numbers as lax.conv_general_dilated with feature_group_count=C, written as 27 shifted
  multiply-adds that XLA fuses into one loop (grouped 3-D convs are slow on XLA:CPU).
  """
  t, h, w = (x.shape[i] - 2 for i in (1, 2, 3))
  out = None
  for a in range(3):
    for b in range(3):
      for c in range(3):
        term = x[:, a:a + t, b:b + h, c:c + w, :] * kernel[a, b, c]
        out = term if out is None else out + term
  return out


def _peg_pads(time_pad):
  return [(0, 0), tuple(time_pad), (1, 1), (1, 1), (0, 0)]


def _tap(xp, a, b, c, shape):
  """xp[:, a:a+t, b:b+h, c:c+w] for shape (B, t, h, w, C), `a` possibly traced."""
  return jax.lax.dynamic_slice(xp, (0, a, b, c, 0), shape)


def _looped_depthwise_conv3(xp, kernel):
  """`depthwise_conv3` (same taps, same order of the sums) with the 3 time offsets in a loop of 9 taps each.

  The loop is what makes it fast inside a train step: written flat, XLA:CPU fuses the 27 taps' producer into
  each tap and their sum into each consumer, so the padded input is materialised as 26 shifted copies and
  the whole sum recomputed by every consumer (in the backward pass too). A loop body is a fusion boundary:
  its operands and its result are computed once.
  """
  t, h, w = (xp.shape[i] - 2 for i in (1, 2, 3))
  shape = (xp.shape[0], t, h, w, xp.shape[4])

  def plane(a, acc):
    for b in range(3):
      for c in range(3):
        term = _tap(xp, a, b, c, shape) * kernel[a, b, c]
        acc = term if acc is None else acc + term
    return acc
  return jax.lax.fori_loop(1, 3, plane, plane(0, None))


def _looped_tap_sums(xp, g):
  """(3, 3, 3, C): sum over (B, t, h, w) of xp[:, a:a+t, b:b+h, c:c+w] * g, the kernel gradient."""
  def plane(a, dk):
    sums = jnp.stack([jnp.sum(_tap(xp, a, b, c, g.shape) * g, axis=(0, 1, 2, 3))
                      for b in range(3) for c in range(3)])
    return jax.lax.dynamic_update_slice(dk, sums.reshape(1, 3, 3, -1), (a, 0, 0, 0))
  return jax.lax.fori_loop(0, 3, plane, jnp.zeros((3, 3, 3, g.shape[-1]), g.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def padded_depthwise_conv3(x, kernel, time_pad):
  """`depthwise_conv3` of x (B, T, H, W, C) zero padded by `time_pad` in time, (1, 1) in space: (B, T, H, W, C).

  Forward and backward are both 27-tap loops (`_looped_depthwise_conv3`): the input gradient is the same
  conv of the output gradient (padded by 2 - pad, kernel flipped), the kernel gradient 27 reductions
  (`_looped_tap_sums`). Differentiating the taps instead would keep 26 shifted copies of the input for the
  backward pass and sum 27 padded gradient tensors.
  """
  return _looped_depthwise_conv3(jnp.pad(x, _peg_pads(time_pad)), kernel)


def _padded_depthwise_conv3_fwd(x, kernel, time_pad):
  return padded_depthwise_conv3(x, kernel, time_pad), (x, kernel)


def _padded_depthwise_conv3_bwd(time_pad, res, g):
  x, kernel = res
  back_pads = [(0, 0)] + [(2 - lo, 2 - hi) for lo, hi in _peg_pads(time_pad)[1:4]] + [(0, 0)]
  dx = _looped_depthwise_conv3(jnp.pad(g, back_pads), kernel[::-1, ::-1, ::-1])
  return dx, _looped_tap_sums(jnp.pad(x, _peg_pads(time_pad)), g)


padded_depthwise_conv3.defvjp(_padded_depthwise_conv3_fwd, _padded_depthwise_conv3_bwd)


class PEG(nn.Module):
  """Depthwise 3x3x3 conv (+ bias) on a token video (B, T, H, W, C), zero padded to keep the shape.

  causal=True pads time (2, 0) (past side only), causal=False (1, 1); space is always padded (1, 1).
  """
  causal: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(in_axis=(0, 1, 2),
                                                                                          out_axis=3),
                                                               ("conv_t", "conv_h", "conv_w", "conv_out")),
                        (3, 3, 3, c))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)), (c,))
    time_pad = (2, 0) if self.causal else (1, 1)
    y = padded_depthwise_conv3(x.astype(self.dtype), kernel.astype(self.dtype), time_pad)
    return y + bias.astype(self.dtype)


class ContinuousPositionBias(nn.Module):
  """`bias(*shape)` -> (heads, N, N) for the N = prod(shape) positions of a grid flattened row-major.

  MLP: Dense(dim) + LeakyReLU(0.1), (layers - 1) x [Dense(dim) + LeakyReLU(0.1)], Dense(heads), applied to
  every pairwise offset. Parameters net_0, net_1, ..., net_{layers} are torch's net.0.0, net.1.0, ..., net.{L}.
  phenaki-pytorch builds C-ViViT's with dim = the model dim and MaskGIT's (3-D) with dim = dim_head.
  """
  heads: int
  dim: int = 64
  layers: int = 2

  @nn.compact
  def __call__(self, *shape: int):
    # The MLP runs once per distinct offset (prod(2s - 1) of them, e.g. 2025 for MaskGIT-S's 5 x 8 x 8 grid)
    # and the (N, N) pairs gather their offset's row: the values of running it on every pair (102400).
    features, index = relative_offset_table(shape)
    h = jnp.asarray(features)
    for i in range(self.layers):
      h = nn.leaky_relu(attention.dense(self.dim, (None, None), name=f"net_{i}", use_bias=True)(h), 0.1)
    h = attention.dense(self.heads, (None, None), name=f"net_{self.layers}", use_bias=True)(h)
    return jnp.take(jnp.transpose(h), jnp.asarray(index), axis=1)


@functools.lru_cache(maxsize=32)
def relative_offset_table(shape: tuple) -> tuple:
  """(features (U, len(shape)) float32, index (N, N) int32) for the N positions of a row-major grid `shape`.

  The U = prod(2s - 1) distinct offsets d = p_i - p_j, each as sign(d) * log(|d| + 1) per axis (the values
  of `position.relative_log_positions`), and for every pair (i, j) the row of its offset."""
  shape = tuple(int(s) for s in shape)
  offsets = np.stack(np.meshgrid(*[np.arange(1 - s, s) for s in shape], indexing="ij"), -1)
  offsets = offsets.reshape(-1, len(shape)).astype(np.float32)
  features = np.sign(offsets) * np.log(np.abs(offsets) + 1.0)
  pos = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
  diff = pos[:, None, :] - pos[None, :, :] + (np.asarray(shape) - 1)
  index = np.ravel_multi_index(tuple(np.moveaxis(diff, -1, 0)), [2 * s - 1 for s in shape])
  return features, index.astype(np.int32)


class Transformer(nn.Module):
  """depth x [PEG?, self-attention, cross-attention?, feed-forward] on (..., N, C), then a LayerNorm.

  Call: `x` (B', N, C); `bias` for self-attention (e.g. (heads, N, N)); `mask` (B', N) self-attention key mask;
  `context` (B', M, Dc) and `context_mask` (B', M) for cross-attention (skipped when `context` is None, as in
  the reference); with `peg`, either `to_video`/`from_video` or `video_shape` (module docstring).
  """
  depth: int
  heads: int = 8
  dim_head: int = 64
  causal: bool = False
  peg: bool = False
  peg_causal: bool = False
  cross_attention: bool = False
  num_null_kv: int = 2                   # null key/values of the cross-attention (self-attention has none)
  ff_mult: float = 4.0
  attn_dropout: float = 0.0
  ff_dropout: float = 0.0
  reference_compat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, bias=None, mask=None, context=None, context_mask=None, video_shape=None,
               to_video: Callable | None = None, from_video: Callable | None = None,
               deterministic: bool = True):
    if self.peg and to_video is None:
      if video_shape is None:
        raise ValueError("a Transformer with peg=True needs video_shape or to_video/from_video")
      seq_shape = x.shape
      to_video = lambda s: s.reshape(*video_shape, s.shape[-1])
      from_video = lambda v: v.reshape(seq_shape)
    det = dict(deterministic=deterministic)
    attn = dict(heads=self.heads, dim_head=self.dim_head, dropout=self.attn_dropout, dtype=self.dtype)
    for i in range(self.depth):
      if self.peg:
        x = x + from_video(PEG(self.peg_causal, dtype=self.dtype, name=f"layer_{i}_peg")(to_video(x)))
      x = x + Attention(causal=self.causal, kv_from_unnormed_input=self.reference_compat,
                        name=f"layer_{i}_attn", **attn)(x, bias=bias, mask=mask, **det)
      if self.cross_attention and context is not None:
        x = x + Attention(num_null_kv=self.num_null_kv, name=f"layer_{i}_cross_attn", **attn)(
            x, context, mask=context_mask, **det)
      x = x + FeedForward(self.ff_mult, self.ff_dropout, dtype=self.dtype, name=f"layer_{i}_ff")(x, **det)
    return norms.ChannelLayerNorm(dtype=self.dtype, name="norm_out")(x)
