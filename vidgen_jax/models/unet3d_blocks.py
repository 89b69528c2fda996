"""Building blocks of the video-diffusion 3D U-Net (channels-last video (B, T, H, W, C)).

Each attention block is torch's Residual(PreNorm(EinopsToAndFrom(...))): x + attn(fold(layer_norm(x))),
with sharding constraints on both sides of the fold. Parameter names follow the torch modules (see the
mapping table in `unet3d.py`).
"""
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidgen_jax.layers import attention, conv, embeddings, norms, position

VIDEO_AXES = ("batch", "frames", "height", "width", "act_channels")
SPATIAL_TOKEN_AXES = ("batch", "tokens", "act_channels")  # (B*T, H*W, C) or (B, T*H*W, C)
FRAMES_LEADING_AXES = ("frames", "batch", "height", "width", "act_channels")  # (T, B, H, W, C)


class _FrameAttentionConfig(NamedTuple):
  heads: int
  dim_head: int
  rotary_dim: int | None
  dtype: jnp.dtype


def constrain_video(x):
  return nn.with_logical_constraint(x, VIDEO_AXES)


class Block(nn.Module):
  """3x3 space conv -> channel RMSNorm -> optional FiLM x * (scale + 1) + shift -> SiLU.

  `groups` set: GroupNorm(groups) over (channel group, frames, height, width) with scale and bias instead
  of the RMSNorm, i.e. torch's nn.GroupNorm(groups, C) of video-diffusion-pytorch before 0.7.0.
  """
  features: int
  dtype: jnp.dtype = jnp.float32
  groups: int | None = None

  @nn.compact
  def __call__(self, x, scale_shift=None):
    x = conv.SpaceConv(self.features, (3, 3), padding=1, dtype=self.dtype, name="proj")(x)
    if self.groups:
      x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, dtype=self.dtype, use_fast_variance=False,
                       scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
                       name="norm")(x)
    else:
      x = norms.ChannelRMSNorm(dtype=self.dtype, name="norm")(x)
    if scale_shift is not None:
      scale, shift = scale_shift
      x = x * (scale + 1) + shift
    return nn.silu(x)


class ResnetBlock(nn.Module):
  """Two Blocks with FiLM from `emb` (B, E) on the first, plus a 1x1 residual conv when widths differ.

  Called with emb=None it has no `mlp` (the U-Net's final block). `temporal_kernel` > 0 (our addition, off
  in the reference) adds a zero-initialised residual 1-D conv over frames between the two Blocks, making
  the block pseudo-3D: it starts as the reference block and can learn local motion detectors.
  """
  features: int
  dtype: jnp.dtype = jnp.float32
  temporal_kernel: int = 0
  groups: int | None = None   # GroupNorm in both Blocks (pre-0.7.0 reference); None = RMSNorm

  @nn.compact
  def __call__(self, x, emb=None):
    scale_shift = None
    if emb is not None:
      film = attention.dense(2 * self.features, ("embed", "mlp"), name="mlp", use_bias=True,
                             dtype=self.dtype)(nn.silu(emb))
      # emb (B, E): one condition per sample; (B, T, E): one per frame (joint image+video training).
      film = film[:, None, None, None, :] if film.ndim == 2 else film[:, :, None, None, :]
      scale_shift = (film[..., : self.features], film[..., self.features:])
    h = Block(self.features, dtype=self.dtype, groups=self.groups, name="block1")(x, scale_shift)
    if self.temporal_kernel:
      h = h + conv.TemporalConv(self.features, self.temporal_kernel, dtype=self.dtype, name="temporal_conv")(h)
    h = Block(self.features, dtype=self.dtype, groups=self.groups, name="block2")(h)
    if x.shape[-1] != self.features:
      x = conv.PointwiseConv(self.features, dtype=self.dtype, name="res_conv")(x)
    return constrain_video(h + x.astype(h.dtype))


class TimestepMLP(nn.Module):
  """Sinusoid(dim) -> Dense(4 dim) -> exact GELU -> Dense(4 dim), in float32 (torch `time_mlp`)."""
  dim: int

  @nn.compact
  def __call__(self, time):
    h = embeddings.sinusoidal_embedding(time, self.dim)
    h = attention.dense(4 * self.dim, ("embed", "mlp"), name="dense_in", use_bias=True)(h)
    h = nn.gelu(h, approximate=False)
    return attention.dense(4 * self.dim, ("mlp", "embed"), name="dense_out", use_bias=True)(h)


class TokenPoolMLP(nn.Module):
  """Masked mean over tokens of LayerNorm -> Dense -> GELU -> Dense, in float32: (..., L, D) -> (..., out).

  A per-token non-linear map before pooling lets the FiLM condition separate prompts whose pooled sentence
  embeddings are close (MiniLM: "moving left"/"moving right" pooled cosine 0.965) by their differing tokens.
  A sample whose mask is all False (null condition) gets zeros.
  """
  hidden: int
  out: int

  @nn.compact
  def __call__(self, tokens, mask):
    h = nn.LayerNorm(name="norm")(tokens.astype(jnp.float32))
    h = nn.gelu(attention.dense(self.hidden, ("embed", "mlp"), name="dense_in", use_bias=True)(h))
    h = attention.dense(self.out, ("mlp", "embed"), name="dense_out", use_bias=True)(h)
    m = mask.astype(jnp.float32)[..., None]
    return (h * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)


class FrameCondMLP(nn.Module):
  """emb (B, E) or (B, T, E) -> (B, T, E): emb + MLP([emb, sinusoid(frame index)]), in float32.

  The last layer is zero-initialised, so the block starts as the identity (every frame gets emb).
  """
  hidden: int

  @nn.compact
  def __call__(self, emb, frames):
    emb = emb.astype(jnp.float32)
    if emb.ndim == 2:
      emb = jnp.broadcast_to(emb[:, None], (emb.shape[0], frames, emb.shape[-1]))
    pos = embeddings.sinusoidal_embedding(jnp.arange(frames), 16)
    h = jnp.concatenate([emb, jnp.broadcast_to(pos, emb.shape[:2] + pos.shape[-1:])], axis=-1)
    h = nn.silu(attention.dense(self.hidden, ("embed", "mlp"), name="dense_in", use_bias=True)(h))
    return emb + attention.dense(emb.shape[-1], ("mlp", "embed"), name="dense_out", use_bias=True,
                                 kernel_init=nn.initializers.zeros_init())(h)


def null_condition_mask(null_cond, cond, batch, frames):
  """The null-condition flags as bool (B,), or (B, T) when cond is per frame (B, T, D); None = all False."""
  shape = (batch, frames) if cond is not None and cond.ndim == 3 else (batch,)
  null_cond = jnp.zeros(shape, bool) if null_cond is None else jnp.asarray(null_cond).astype(bool)
  if null_cond.shape != shape:
    raise ValueError(f"null_cond {null_cond.shape} must be {shape} for cond "
                     f"{None if cond is None else cond.shape}")
  return null_cond


def null_replaced_cond(module, cond, null_cond, cond_dim):
  """cond (B, [T,] Dc) as float32 with the null rows replaced by `module`'s learned `null_cond_emb`."""
  null_emb = module.param("null_cond_emb", nn.with_logical_partitioning(
      nn.initializers.normal(stddev=1.0), (None, "cond")), (1, cond_dim), jnp.float32)
  return jnp.where(null_cond[..., None], null_emb, cond.astype(jnp.float32))


def text_context(text_tokens, text_mask, null_cond, dtype):
  """Cross-attention context: tokens (B, [T,] L, D) in `dtype` and mask (B, [T,] L), all-True when text_mask
  is None, with every token of a null-conditioned sample (or frame) masked out."""
  mask = jnp.ones(text_tokens.shape[:-1], bool) if text_mask is None else text_mask.astype(bool)
  if mask.ndim != null_cond.ndim + 1:
    raise ValueError(f"text_mask {mask.shape} and null_cond {null_cond.shape}: per-frame tokens need "
                     "per-frame null_cond and vice versa")
  return text_tokens.astype(dtype), mask & ~null_cond[..., None]


def _fold_space(x):
  """(B, T, H, W, C) -> (B*T, H*W, C): every frame is a sequence of H*W tokens."""
  b, t, h, w, c = x.shape
  return nn.with_logical_constraint(x.reshape(b * t, h * w, c), SPATIAL_TOKEN_AXES)


def _unfold_space(y, shape):
  y = nn.with_logical_constraint(y, SPATIAL_TOKEN_AXES)
  return constrain_video(y.reshape(shape[:-1] + (y.shape[-1],)))


def frame_attention_mask(frame_groups=None, focus_present_mask=None, frames=None):
  """(B, T, T) bool "frame i may attend to frame j", or None when every frame may see every frame.

  frame_groups (B, T) int: frames attend only within their group (joint image+video training gives the
  video's frames group 0 and each appended image its own group). focus_present_mask (B,) bool: True
  restricts every frame of that sample to itself.
  """
  mask = None
  if frame_groups is not None:
    mask = frame_groups[:, :, None] == frame_groups[:, None, :]
  if focus_present_mask is not None:
    eye = jnp.eye(frames if frame_groups is None else frame_groups.shape[1], dtype=bool)
    focus = jnp.where(focus_present_mask.astype(bool)[:, None, None], eye, True)
    mask = focus if mask is None else mask & focus
  return mask


class _AttentionParams(nn.Module):
  """The parameters of `attention.Attention` / `LeadingAxisAttention` (to_qkv, to_out), created, not applied."""
  heads: int
  dim_head: int

  @nn.compact
  def __call__(self, channels):
    inner = self.heads * self.dim_head
    w_qkv, _ = attention.DenseParams(3 * inner, ("embed", "heads"), name="to_qkv")(channels)
    w_out, _ = attention.DenseParams(channels, ("heads", "embed"), name="to_out")(inner)
    return {"to_qkv": {"kernel": w_qkv}, "to_out": {"kernel": w_out}}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _frame_attention(params, y, bias, mask, layer):
  """Attention over the frames of y (T, B, H, W, C). Evaluated through `attention.Attention` on (B, H, W, T, C)
  sequences; differentiated through `attention.LeadingAxisAttention` on y as laid out. The two compute the
  same function with the same parameters (tests/test_layers.py); on XLA:CPU the first is the faster forward
  pass (VDM-S denoising step 6-10% faster), the second the faster forward + backward (train step 10%)."""
  out = attention.Attention(layer.heads, layer.dim_head, rotary_dim=layer.rotary_dim, dtype=layer.dtype).apply(
      {"params": params}, jnp.moveaxis(y, 0, -2), bias=bias, mask=_head_mask(mask))
  return jnp.moveaxis(out, -2, 0)


def _head_mask(mask):
  """(B, 1, 1, T, T) -> (B, 1, 1, 1, T, T), against the logits (B, H, W, heads, T, T) of either layout."""
  return None if mask is None else mask[..., None, :, :]


def _leading(params, y, bias, mask, layer):
  return attention.LeadingAxisAttention(layer.heads, layer.dim_head, rotary_dim=layer.rotary_dim,
                                        dtype=layer.dtype).apply({"params": params}, y, bias=bias,
                                                                 mask=_head_mask(mask))


def _frame_attention_fwd(params, y, bias, mask, layer):
  return jax.vjp(lambda p, y, b: _leading(p, y, b, mask, layer), params, y, bias)


def _frame_attention_bwd(layer, vjp, g):
  return (*vjp(g), None)   # no cotangent for the boolean mask


_frame_attention.defvjp(_frame_attention_fwd, _frame_attention_bwd)


class TemporalAttentionBlock(nn.Module):
  """x + Attention over frames at every pixel, with rotary and the shared relative position bias.

  pos_bias: (heads, T, T) or None. frame_mask: (B, T, T) bool or None (`frame_attention_mask`). Parameters
  `attn/to_qkv`, `attn/to_out` as `attention.Attention`'s; the forward and backward passes take the layouts
  that are fastest for each (`_frame_attention`).
  """
  heads: int
  dim_head: int
  rotary_dim: int | None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos_bias=None, frame_mask=None):
    params = _AttentionParams(self.heads, self.dim_head, name="attn")(x.shape[-1])
    y = norms.ChannelLayerNorm(dtype=self.dtype, name="norm")(x)
    y = nn.with_logical_constraint(jnp.swapaxes(y, 0, 1), FRAMES_LEADING_AXES)
    mask = None if frame_mask is None else frame_mask[:, None, None]   # (B, 1, 1, T, T)
    y = _frame_attention(params, y, pos_bias, mask, _FrameAttentionConfig(self.heads, self.dim_head,
                                                                          self.rotary_dim, self.dtype))
    y = nn.with_logical_constraint(y, FRAMES_LEADING_AXES)
    return constrain_video(x + constrain_video(jnp.swapaxes(y, 0, 1)))


class SpatialAttentionBlock(nn.Module):
  """x + attention over the H*W pixels of every frame: full softmax attention or linear attention."""
  heads: int
  dim_head: int = 32
  linear: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _fold_space(norms.ChannelLayerNorm(dtype=self.dtype, name="norm")(x))
    if self.linear:
      y = attention.SpatialLinearAttention(self.heads, self.dim_head, dtype=self.dtype, name="attn")(y)
    else:
      y = attention.Attention(self.heads, self.dim_head, dtype=self.dtype, name="attn")(y)
    return constrain_video(x + _unfold_space(y, x.shape))


class SpaceTimeAttentionBlock(nn.Module):
  """x + full softmax attention over all T*H*W tokens of each sample (not factorised), with axial rotary
  positions: `rotary_dims` = channels per head rotated by (frame, row, column). Rotary makes the logits
  depend on the (dt, dy, dx) offset between tokens, so a query can pick "the same object dx to the left
  one frame earlier": displacement, i.e. motion, is one attention pattern instead of a composition of
  separate spatial and temporal steps.
  """
  heads: int
  dim_head: int = 32
  rotary_dims: tuple = (8, 8, 8)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, frame_mask=None):
    """frame_mask (B, T, T) bool or None: token (i, y, x) may attend to (j, y', x') iff frame_mask[i, j]."""
    b, t, h, w, c = x.shape
    y = norms.ChannelLayerNorm(dtype=self.dtype, name="norm")(x)
    y = nn.with_logical_constraint(y.reshape(b, t * h * w, c), SPATIAL_TOKEN_AXES)
    angles = position.axial_rotary_angles((t, h, w), self.rotary_dims)
    mask = None
    if frame_mask is not None:
      mask = jnp.repeat(jnp.repeat(frame_mask, h * w, axis=1), h * w, axis=2)[:, None]  # (B, 1, N, N)
    y = attention.Attention(self.heads, self.dim_head, dtype=self.dtype, name="attn")(y, mask=mask,
                                                                                       angles=angles)
    return constrain_video(x + _unfold_space(y, x.shape))


class CrossAttentionBlock(nn.Module):
  """x + cross-attention from every (frame, pixel) of a sample to its text tokens (plus the null token)."""
  heads: int
  dim_head: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, tokens, token_mask):
    """tokens (B, L, D) / token_mask (B, L): one caption per sample; (B, T, L, D) / (B, T, L): per frame."""
    b, t, h, w, c = x.shape
    y = norms.ChannelLayerNorm(dtype=self.dtype, name="norm")(x)
    if tokens.ndim == 4:   # per-frame captions: every frame is its own query sequence
      y = y.reshape(b * t, h * w, c)
      tokens, token_mask = tokens.reshape((b * t,) + tokens.shape[2:]), token_mask.reshape(b * t, -1)
    else:
      y = y.reshape(b, t * h * w, c)
    y = nn.with_logical_constraint(y, SPATIAL_TOKEN_AXES)
    y = attention.CrossAttention(self.heads, self.dim_head, dtype=self.dtype, name="attn")(
        y, tokens, token_mask)
    return constrain_video(x + _unfold_space(y, x.shape))
