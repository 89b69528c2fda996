"""Attention layers on channels-last token sequences (..., N, C).

* `dot_product_attention`: the pure core. q (..., Lq, H, D) already scaled, k/v (..., Lk, H, D), optional
  additive bias and boolean mask (True = may attend) broadcastable to (..., H, Lq, Lk); logits and softmax
  in float32.
* `Attention`: full self-attention with a fused bias-free `to_qkv` whose output is [q | k | v], each
  head-major (h, d) like torch's `chunk(3)` + `'(h d)'`, so a torch Linear weight maps by transpose; optional
  interleaved rotary embedding on the first `rotary_dim` channels of q and k (video-diffusion temporal attn).
* `LeadingAxisAttention`: `Attention`'s parameters and arithmetic along the leading axis of (L, ..., C)
  (the U-Net's attention over frames, without transposing the video).
* `SpatialLinearAttention`: video-diffusion's linear attention (q softmax over features, k over positions),
  with the value and output projections folded together where that is cheaper.
* `CrossAttention`: queries from video features, keys/values from text tokens plus a learned null key/value
  that is always present, so a sample whose tokens are all masked out is still well defined.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidgen_jax.layers import norms, position

_NEG_INF = -jnp.finfo(jnp.float32).max


class FlatDense(nn.Dense):
  """nn.Dense applied to its input (..., C) reshaped to one (prod(...), C) matrix (same parameters, same values).

  Its weight gradient then contracts a single axis. With several (batch and tokens) XLA:CPU canonicalises
  the contraction by transposing the output gradient, which it fuses into (recomputes in) the gradient's
  producers: a second, transposed pass over the whole residual-stream gradient for every Dense."""

  def __call__(self, inputs):
    y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return y.reshape(*inputs.shape[:-1], y.shape[-1])


def dense(features, axes, *, name, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
          kernel_init=nn.initializers.lecun_normal(), flat=False):
  """nn.Dense whose kernel carries logical axes `axes` (in, out) and whose bias carries (out,); `flat`: a
  `FlatDense` (faster gradients on XLA:CPU for inputs with several leading axes)."""
  return (FlatDense if flat else nn.Dense)(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)))


def add_bias(logits, bias):
  """logits + bias, bias broadcasting against logits.

  A bias shared over leading axes of the logits (e.g. (heads, Lq, Lk) for every batch element) gets the
  gradient summed over those axes as one matrix product: XLA:CPU's reduction over a major axis is up to
  ~50x slower (it was 14% of the MaskGIT-S train step)."""
  while bias.ndim and bias.shape[0] == 1:
    bias = bias[0]
  lead = logits.ndim - bias.ndim
  if lead == 0 or bias.shape != logits.shape[lead:]:
    return logits + bias
  return _add_leading_bias(logits, bias, lead)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _add_leading_bias(logits, bias, lead):
  return logits + bias


def _add_leading_bias_fwd(logits, bias, lead):
  return logits + bias, None


def _add_leading_bias_bwd(lead, _, g):
  rows = math.prod(g.shape[:lead])
  dbias = jnp.ones((rows,), g.dtype) @ g.reshape(rows, -1)
  return g, dbias.reshape(g.shape[lead:])


_add_leading_bias.defvjp(_add_leading_bias_fwd, _add_leading_bias_bwd)


def dot_product_attention(q, k, v, *, bias=None, mask=None, probs_fn=None, normalize_last=False):
  """softmax(q k^T + bias, masked) v with q (..., Lq, H, D), k/v (..., Lk, H, D) -> (..., Lq, H, Dv).

  q must already carry the 1/sqrt(D) scale. Masked logits are set to -float32.max (as torch's masked_fill
  with -finfo.max), so a fully masked row degrades to a uniform average rather than NaN. `probs_fn`, if
  given, transforms the probabilities (..., H, Lq, Lk) before they weight v (e.g. attention dropout).

  `normalize_last` (without `probs_fn`): exp(logits - max) weights v and the (..., Lq, H, Dv) result is
  divided by the row sums, instead of dividing the (..., H, Lq, Lk) weights: the same values up to float
  rounding, and on XLA:CPU a third less time for MaskGIT-S's 320-token attention (forward and backward).
  """
  # Head-major operands: XLA:CPU runs these batched matmuls ~2x faster than with heads between L and D.
  qh, kh, vh = (jnp.swapaxes(t, -2, -3) for t in (q, k, v))
  logits = jnp.einsum("...hqd,...hkd->...hqk", qh, kh, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = add_bias(logits, bias.astype(jnp.float32))
  if mask is not None:
    logits = jnp.where(mask, logits, _NEG_INF)
  if normalize_last and probs_fn is None:
    weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    out = jnp.einsum("...hqk,...hkd->...hqd", weights.astype(v.dtype), vh)
    return jnp.swapaxes(out / jnp.sum(weights, axis=-1, keepdims=True).astype(out.dtype), -2, -3)
  probs = jax.nn.softmax(logits, axis=-1)
  if probs_fn is not None:
    probs = probs_fn(probs)
  return jnp.swapaxes(jnp.einsum("...hqk,...hkd->...hqd", probs.astype(v.dtype), vh), -2, -3)


class SplitProjection(nn.Module):
  """A bias-free Dense to `parts` * `heads` * `dim_head` features, returned as `parts` arrays (..., N, H, D).

  The kernel is stored fused, (C, parts * heads * dim_head) with the parts [q | k | v] side by side and each
  head-major: the layout of nn.Dense + `_split_heads` (and of torch's `to_qkv` Linear, transposed). Each part
  is its own matmul against its column block, so the backward pass never pads the parts' gradients back to
  the fused width.

  `rotary_angles` (N, rot_dim), for a sequence axis -2 of length N, rotates the first rot_dim channels of
  each head of the parts in `rotate` (q and k). Rotation acts on output channels, so it is folded into the
  kernel: one rotated (C, H, D) kernel per position and a matmul batched over positions. Same numbers as
  rotating the projected activations, but the big (..., N, H, D) tensors see no elementwise rotary ops and
  no transposed copies in the backward pass (those were ~25% of the VDM-S train step on XLA:CPU).
  With `leading` the sequence axis is the leading one instead, x (N, ..., C) -> (N, ..., H, D).
  """
  parts: int
  heads: int
  dim_head: int
  rotate: tuple = (0, 1)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  leading: bool = False

  @nn.compact
  def __call__(self, x, rotary_angles=None):
    inner = self.heads * self.dim_head
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "heads")),
                        (x.shape[-1], self.parts * inner), self.param_dtype)
    x = x.astype(self.dtype)
    outs = []
    for i in range(self.parts):
      part = kernel[:, i * inner:(i + 1) * inner].reshape(-1, self.heads, self.dim_head)
      if rotary_angles is not None and i in self.rotate:
        rotated = position.apply_rotary(part[None], rotary_angles[:, None, None, :])  # (N, C, H, D)
        spec = "n...c,nchd->n...hd" if self.leading else "...nc,nchd->...nhd"
        outs.append(jnp.einsum(spec, x, rotated.astype(self.dtype)))
      else:
        outs.append(jnp.einsum("...c,chd->...hd", x, part.astype(self.dtype)))
    return tuple(outs)


def _split_heads(x, parts, heads, dim_head):
  """(..., N, parts*heads*dim_head) -> tuple of `parts` arrays (..., N, heads, dim_head)."""
  x = x.reshape(*x.shape[:-1], parts, heads, dim_head)
  return tuple(x[..., i, :, :] for i in range(parts))


class Attention(nn.Module):
  """Multi-head self-attention over the N axis of (..., N, C); output has C channels."""
  heads: int = 4
  dim_head: int = 32
  rotary_dim: int | None = None
  rotary_theta: float = 10000.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, bias=None, mask=None, angles=None):
    """`angles` (N, rot_dim) overrides the 1-D rotary of `rotary_dim` (e.g. `position.axial_rotary_angles`)."""
    inner = self.heads * self.dim_head
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if angles is None and self.rotary_dim:
      angles = position.rotary_angles(jnp.arange(x.shape[-2]), self.rotary_dim, self.rotary_theta)
    q, k, v = SplitProjection(3, self.heads, self.dim_head, name="to_qkv", **kw)(x, angles)
    q = q * (self.dim_head**-0.5)
    out = dot_product_attention(q, k, v, bias=bias, mask=mask)
    out = out.reshape(*x.shape[:-1], inner)
    return dense(x.shape[-1], ("heads", "embed"), name="to_out", **kw)(out)


class LeadingAxisAttention(Attention):
  """Multi-head self-attention along the leading axis of x (L, *rest, C): every position of `rest` is its
  own sequence of L tokens. The same parameters (`to_qkv`, `to_out`), rotary and arithmetic as `Attention`
  applied to x moved to (*rest, L, C), without moving it.

  For the U-Net's temporal attention over frames: with the frames leading, the per-frame rotary projection
  is a matmul batched over the leading axis, so neither it nor its gradient transposes the (L, *rest, H, D)
  activations. On XLA:CPU its forward + backward is the faster one (VDM-S train step 10% faster than through
  `Attention` on (B*H*W, T, C) sequences) and its forward alone the slower one (denoising step 6-10%), so
  the U-Net differentiates through it and evaluates through `Attention` (`unet3d_blocks._frame_attention`).

  bias: broadcastable to (H, L, L), shared by all sequences (relative positions). mask: bool, broadcastable to
  (*rest, H, L, L), True where query i may attend to key j.
  """

  @nn.compact
  def __call__(self, x, bias=None, mask=None):
    length, rest, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    heads, d, inner = self.heads, self.dim_head, self.heads * self.dim_head
    flat = x.reshape(length, -1, c)
    angles = (position.rotary_angles(jnp.arange(length), self.rotary_dim, self.rotary_theta)
              if self.rotary_dim else None)
    q, k, v = SplitProjection(3, heads, d, dtype=self.dtype, param_dtype=self.param_dtype, leading=True,
                              name="to_qkv")(flat, angles)
    q = q * (d**-0.5)
    logits = jnp.einsum("sphd,tphd->phst", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
      logits = add_bias(logits, bias.astype(jnp.float32))
    if mask is not None:
      mask = jnp.broadcast_to(mask, (*rest, heads, length, length)).reshape(logits.shape)
      logits = jnp.where(mask, logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("phst,tphd->sphd", probs.astype(self.dtype), v).reshape(length, -1, inner)
    # Not a FlatDense: merging the leading axis into the sharded batch axis behind it leaves no tiling XLA's
    # SPMD partitioner can keep, and under fsdp_tensor it replicated the whole activation on every device
    # (tests/test_parallel.py). On XLA:CPU the two cost the same (demo and VDM-S train steps, side by side).
    y = dense(c, ("heads", "embed"), name="to_out", dtype=self.dtype, param_dtype=self.param_dtype)(out)
    return y.reshape(x.shape[:-1] + (c,))


class DenseParams(nn.Module):
  """The parameters of a `dense(features, axes, use_bias=...)` without applying it: (kernel, bias or None).

  Same names, shapes, initialisers and logical axes as `dense`, for layers that use a projection's weights
  in another order than input -> Dense (e.g. folded into another matrix)."""
  features: int
  axes: tuple
  use_bias: bool = False
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, in_features):
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), self.axes),
                        (in_features, self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[-1],)),
                        (self.features,), self.param_dtype)
    return kernel, bias


class SpatialLinearAttention(nn.Module):
  """Linear attention over N: softmax(q, features) * d^-0.5 and softmax(k, positions); out = (k^T v)^T q.

  The value and output projections are linear, so per head out_h W_out,h = q_h (k_h^T x) (W_v,h W_out,h):
  with `fold_values` the layer computes the (D, C) matrices k_h^T x and never materialises the (N, H, D)
  values and outputs, which halves the per-token work (2 N H D C instead of 2 N C H D + 2 N H D^2) at the
  price of H D C^2 per sequence. None (default) folds when that is cheaper, C^2 < 2 N D; the result is
  the same up to float rounding (the parameters are those of `to_qkv` and `to_out` either way).
  """
  heads: int = 4
  dim_head: int = 32
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  fold_values: bool | None = None

  @nn.compact
  def __call__(self, x):
    c, n = x.shape[-1], x.shape[-2]
    heads, d, inner = self.heads, self.dim_head, self.heads * self.dim_head
    w_qkv, _ = DenseParams(3 * inner, ("embed", "heads"), param_dtype=self.param_dtype, name="to_qkv")(c)
    w_out, b_out = DenseParams(c, ("heads", "embed"), use_bias=True, param_dtype=self.param_dtype,
                               name="to_out")(inner)
    w_q, w_k, w_v = (w_qkv[:, i * inner:(i + 1) * inner].reshape(c, heads, d).astype(self.dtype) for i in range(3))
    w_out = w_out.astype(self.dtype)
    x = x.astype(self.dtype)
    q = jnp.einsum("...c,chd->...hd", x, w_q)
    k = jnp.einsum("...c,chd->...hd", x, w_k)
    q = (jax.nn.softmax(q.astype(jnp.float32), axis=-1) * (d**-0.5)).astype(self.dtype)
    k = jax.nn.softmax(k.astype(jnp.float32), axis=-3).astype(self.dtype)
    fold = self.fold_values if self.fold_values is not None else c * c < 2 * n * d
    if fold:
      keys_x = jnp.einsum("...nhd,...nc->...hdc", k, x)
      value_out = jnp.einsum("che,heo->hco", w_v, w_out.reshape(heads, d, c))
      y = jnp.einsum("...nhd,...hdo->...no", q, jnp.einsum("...hdc,hco->...hdo", keys_x, value_out))
    else:
      v = jnp.einsum("...c,chd->...hd", x, w_v)
      context = jnp.einsum("...nhd,...nhe->...hde", k, v)
      out = jnp.einsum("...hde,...nhd->...nhe", context, q).reshape(*x.shape[:-1], inner)
      y = out @ w_out
    return y + b_out.astype(self.dtype)


class CrossAttention(nn.Module):
  """Queries from x (B, N, C); keys/values from [null token; context (B, L, context_dim)].

  `context_mask` (B, L) bool marks real tokens (True) versus padding; the learned `null_kv`
  (2, heads * dim_head) key/value pair is always attendable. The context is layer-normed (gain only) before
  projection. With `zero_init_output` the output projection starts at zero, so the block starts as an
  identity residual.
  """
  heads: int = 8
  dim_head: int = 32
  zero_init_output: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_mask=None):
    batch, inner = x.shape[0], self.heads * self.dim_head
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    (q,) = _split_heads(dense(inner, ("embed", "heads"), name="to_q", **kw)(x), 1, self.heads, self.dim_head)
    q = q * (self.dim_head**-0.5)
    context = norms.ChannelLayerNorm(name="context_norm", **kw)(context)
    k, v = SplitProjection(2, self.heads, self.dim_head, name="to_kv", **kw)(context)
    null_kv = self.param(
        "null_kv", nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), (None, "heads")),
        (2, inner), self.param_dtype).astype(self.dtype)
    null_k, null_v = (
        jnp.broadcast_to(t.reshape(1, 1, self.heads, self.dim_head), (batch, 1, self.heads, self.dim_head))
        for t in null_kv)
    k = jnp.concatenate([null_k, k], axis=1)
    v = jnp.concatenate([null_v, v], axis=1)
    mask = None
    if context_mask is not None:
      keep = jnp.concatenate([jnp.ones((batch, 1), bool), context_mask.astype(bool)], axis=1)
      mask = keep[:, None, None, :]  # (B, 1, 1, 1 + L) against logits (B, H, N, 1 + L)
    out = dot_product_attention(q, k, v, mask=mask).reshape(*x.shape[:-1], inner)
    out_init = nn.initializers.zeros_init() if self.zero_init_output else nn.initializers.lecun_normal()
    return dense(x.shape[-1], ("heads", "embed"), name="to_out", kernel_init=out_init, **kw)(out)
