"""The 3D U-Net of video-diffusion-pytorch 0.7.0 (Ho et al., "Video Diffusion Models"), channels-last.

Same architecture and math as the reference `Unet3D` (space-only 1x3x3 convs, per-frame linear attention,
temporal attention with rotary + a shared T5 relative position bias, full spatial attention in the middle,
FiLM conditioning on [time embedding ; cond]), with additions that are off by default:
`text_token_dim` (text tokens: cross-attention after every temporal attention of the levels and the middle
unless `cross_attention=False`), `text_cond_mlp` (a per-token MLP pooled into cond), `frame_cond_mlp` (a per-frame
FiLM condition), `position_features` (absolute 2-D positions), `temporal_conv` (pseudo-3D resnets),
`max_frames_embedding`, `space_time_attention` and `remat`. Video is (B, T, H, W, C) instead of torch's (B, C, T, H, W).

Differences from the reference that are deliberate:
* `init_dim` must equal `dim` (ValueError; the reference crashes later, research/anchors_pytorch.md 1.9-a).
* There is no RNG inside the model: condition dropout (`null_cond`) and `focus_present_mask` are passed in.
  As in the reference, `init_temporal_attn` never sees the focus-present mask.
* `null_cond` True also masks out every text token (only the learned null key/value remains).

Torch state_dict -> Flax params (`torch_key_to_flax` implements it; `convert_torch_value` the rules).
Prefixes: levels `downs.{i}.{s}` -> `downs_{i}_{slot}` and `ups.{i}.{s}` -> `ups_{i}_{slot}` with slots
s = 0 resnet1, 1 resnet2, 2 spatial_attn (linear), 3 temporal_attn, 4 downsample / upsample.
R = a ResnetBlock prefix (`downs_{i}_resnet{1,2}`, `ups_..`, `mid_block{1,2}`, `final_block`),
A = a softmax-attention block (`init_temporal_attn`, `*_temporal_attn`, `mid_spatial_attn`),
L = a linear-attention block (`*_spatial_attn` of the levels).

Every torch `X.bias` maps to flax `X'/bias` (rule copy) beside the `X'/kernel` of its weight.

  torch key (shape)                                 flax path (shape)                          rule
  time_rel_pos_bias.relative_attention_bias.weight  time_rel_pos_bias/relative_attention_bias  copy
  init_conv.weight (d, c, 1, k, k)                  init_conv/kernel (k, k, c, d)              conv
  time_mlp.1.weight (4d, d)                         time_mlp/dense_in/kernel (d, 4d)           linear
  time_mlp.3.weight (4d, 4d)                        time_mlp/dense_out/kernel (4d, 4d)         linear
  null_cond_emb (1, cond_dim)                       null_cond_emb (1, cond_dim)                copy
  R.mlp.1.weight (2o, 4d + cond)                    R/mlp/kernel (4d + cond, 2o)               linear
  R.block{1,2}.proj.weight (o, i, 1, 3, 3)          R/block{1,2}/proj/kernel (3, 3, i, o)      conv
  R.block{1,2}.norm.gamma (o, 1, 1, 1)              R/block{1,2}/norm/gamma (o,)               flatten
  R.block{1,2}.norm.weight (o,)    (before 0.7.0)   R/block{1,2}/norm/scale (o,)               copy
  R.block{1,2}.norm.bias (o,)      (before 0.7.0)   R/block{1,2}/norm/bias (o,)                copy
  R.res_conv.weight (o, i, 1, 1, 1)                 R/res_conv/kernel (i, o)                   pointwise
  A.fn.norm.gamma (1, c, 1, 1, 1)                   A/norm/gamma (c,)                          flatten
  A.fn.fn.fn.to_qkv.weight (3hd, c)                 A/attn/to_qkv/kernel (c, 3hd)              linear
  A.fn.fn.fn.to_out.weight (c, hd)                  A/attn/to_out/kernel (hd, c)               linear
  A.fn.fn.fn.rotary_emb.freqs (min(32, d_h) // 2,)  none: recomputed from theta 10000          drop
  L.fn.norm.gamma (1, c, 1, 1, 1)                   L/norm/gamma (c,)                          flatten
  L.fn.fn.to_qkv.weight (3 * h * 32, c, 1, 1)       L/attn/to_qkv/kernel (c, 3 * h * 32)       pointwise
  L.fn.fn.to_out.weight (c, h * 32, 1, 1)           L/attn/to_out/kernel (h * 32, c)           pointwise
  downs.{i}.4.weight (c, c, 1, 4, 4)                downs_{i}_downsample/kernel (4, 4, c, c)   conv
  ups.{i}.4.weight (ci, co, 1, 4, 4)                ups_{i}_upsample/kernel (4, 4, ci, co)     conv_transpose
  final_conv.0.*                                    final_block/* (R rules; it has no mlp)
  final_conv.1.weight (out, d, 1, 1, 1)             final_conv/kernel (d, out)                 pointwise

Rules on a torch array w: copy = w; linear = w.T; flatten = w.reshape(-1); conv = w[:, :, 0].transpose(2, 3,
1, 0) (kh, kw, in, out); conv_transpose = w[:, :, 0].transpose(2, 3, 0, 1) (torch stores (in, out, ...); no
flip, `SpaceUpsample` flips); pointwise = w.reshape(w.shape[0], w.shape[1]).T. Params with no torch
counterpart (text cross-attention `*_cross_attn/...`) keep their initialisation. Checkpoints older than
0.7.0 have nn.GroupNorm(resnet_groups, C) in Block (`norm.weight`/`norm.bias`): it normalises over a channel
group *and* all frames and pixels, which no per-position RMSNorm gain can reproduce, so they need
`resnet_groups` set (exact GroupNorm path, flax `scale`/`bias`); `vidgen_jax.convert.vdm_torch` does this.
"""
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vidgen_jax.layers import attention, conv, embeddings
from vidgen_jax.models import unet3d_blocks as blocks

_SLOTS = ("resnet1", "resnet2", "spatial_attn", "temporal_attn")
_REL_POS_NUM_BUCKETS = 32
_REL_POS_MAX_DISTANCE = 32
_SPATIAL_DIM_HEAD = 32  # hard-wired in the reference for linear and mid spatial attention


class Unet3D(nn.Module):
  """video-diffusion-pytorch Unet3D. Call: (x (B,T,H,W,C), time (B,), cond (B, cond_dim)) -> (B,T,H,W,out).

  `time` may also be (B, T): one noise level per frame (our addition, for per-frame noise training and
  pyramid sampling, `diffusion.frame_noise_prob` / `sample.frame_offset`); every frame then gets its own
  time embedding in FiLM. Equal per-frame times give the (B,) result.

  Keyword inputs: `null_cond` (B,) bool replaces cond by the learned `null_cond_emb` and masks all text
  tokens; `text_tokens` (B, L, text_token_dim) with `text_mask` (B, L) bool (True = real token);
  `focus_present_mask` (B,) bool stops temporal attention (except the initial one) mixing frames.
  `frame_groups` (B, T) int lets frames attend (in every temporal and space-time attention, the initial one
  included) only to frames of the same group: joint image+video training appends images as extra frames,
  each in its own group. Conditioning may then be per frame: cond (B, T, cond_dim), null_cond (B, T),
  text_tokens (B, T, L, D), text_mask (B, T, L) (every frame of a group carries its group's caption).
  Spatial sides must be divisible by 2**(len(dim_mults) - 1); any number of frames works.
  """
  dim: int
  cond_dim: int | None = None
  out_dim: int | None = None
  dim_mults: Sequence[int] = (1, 2, 4, 8)
  channels: int = 3
  attn_heads: int = 8
  attn_dim_head: int = 32
  init_dim: int | None = None
  init_kernel_size: int = 7
  use_sparse_linear_attn: bool = True
  text_token_dim: int | None = None
  dtype: Any = jnp.float32
  remat: bool = False
  # Our addition, off by default (reference layout): a learned embedding of each frame's absolute index,
  # added after init_conv, so that FiLM's per-channel text signal can act differently on each frame. The
  # reference only has relative temporal positions (rotary + T5 bias). Value = the largest frame count.
  max_frames_embedding: int | None = None
  cross_attention: bool = True
  text_cond_mlp: int | None = None
  # Our addition, off by default: hidden width of an MLP of [time + text embedding, sinusoid(frame index)]
  # whose zero-initialised output is added to every frame's FiLM embedding, so that each ResnetBlock can
  # modulate each frame differently as a function of the text (e.g. "moving right": the object is left of
  # centre early in the clip and right of it late). The reference's FiLM is the same for every frame.
  frame_cond_mlp: int | None = None
  # Our addition, 0 = off: number of frequencies of a 2-D Fourier embedding of each position's normalised
  # (row, column), projected by a zero-initialised Dense and added after init_conv. Space-only convs only
  # sense position through their zero padding; with this the network can place an object at an absolute
  # position (with frame_cond_mlp: a different one in each frame) even from pure noise. Any H, W works.
  position_features: int = 0
  # Our addition, 0 = off (reference): kernel size of a zero-initialised temporal conv inside every
  # ResnetBlock that gets the time/text embedding (see `unet3d_blocks.ResnetBlock`).
  temporal_conv: int = 0
  # Our addition, "none" by default: full space-time attention over all T*H*W tokens with axial rotary
  # positions (`unet3d_blocks.SpaceTimeAttentionBlock`). "mid": replaces the middle's per-frame spatial
  # attention; "all": also after the temporal attention of every level.
  space_time_attention: str = "none"
  # Checkpoints of the reference before 0.7.0: GroupNorm(resnet_groups) in every Block instead of RMSNorm.
  resnet_groups: int | None = None
  # Our addition, off by default (reference): add g(t) * W x to the output, W a 1x1 conv of the raw input
  # and g a per-channel gain of the timestep embedding (1 + zero-initialised Dense; W starts at zero, so the
  # network starts as without it). The reference's only time-independent path from input to output runs
  # through init_conv's `dim` channels and the unconditioned final block; an x0-predicting network over 4x4
  # patches (48 values into 32 channels) then re-draws every patch from its features and pulls rotated shapes
  # back to the axis-aligned ones (docs/ablations.md). eps/v get a full-width identity from their
  # parameterisation instead, but also keep the noise the network cannot represent.
  input_skip: bool = False

  def __post_init__(self):
    if self.init_dim is not None and self.init_dim != self.dim:
      raise ValueError(
          f"init_dim={self.init_dim} must equal dim={self.dim}: the final block concatenates the init "
          "features with a dim-wide stream and expects dim * 2 channels (the reference crashes there)")
    if self.text_cond_mlp and (self.text_token_dim is None or self.cond_dim is None):
      raise ValueError("text_cond_mlp needs text_token_dim and cond_dim (it pools projected text tokens into cond)")
    if self.frame_cond_mlp and self.cond_dim is None:
      raise ValueError("frame_cond_mlp needs cond_dim (it makes the text condition depend on the frame index)")
    if self.space_time_attention not in ("none", "mid", "all"):
      raise ValueError(f"space_time_attention must be none, mid or all, got {self.space_time_attention!r}")
    if self.init_kernel_size % 2 != 1:
      raise ValueError(f"init_kernel_size must be odd, got {self.init_kernel_size}")
    super().__post_init__()

  def _check_inputs(self, x, cond, text_tokens):
    if x.ndim != 5 or x.shape[-1] != self.channels:
      raise ValueError(f"x must be (B, T, H, W, {self.channels}), got {x.shape}")
    factor = 2 ** (len(self.dim_mults) - 1)
    if x.shape[2] % factor or x.shape[3] % factor:
      raise ValueError(f"H and W must be divisible by {factor} for dim_mults={self.dim_mults}, got {x.shape}")
    if (self.cond_dim is None) != (cond is None):
      raise ValueError("cond must be given exactly when cond_dim is set "
                       f"(cond_dim={self.cond_dim}, cond given: {cond is not None})")
    if text_tokens is not None and text_tokens.shape[-1] != (self.text_token_dim or 0):
      raise ValueError(f"text_tokens {text_tokens.shape} need text_token_dim={self.text_token_dim} channels")

  def _text_context(self, text_tokens, text_mask, null_cond):
    """Tokens (B, [T,] L, text_token_dim) and mask (B, [T,] L); absent tokens become one masked-out token."""
    if text_tokens is None:
      text_tokens = jnp.zeros(null_cond.shape + (1, self.text_token_dim), jnp.float32)
      text_mask = jnp.zeros(null_cond.shape + (1,), bool)
    return blocks.text_context(text_tokens, text_mask, null_cond, self.dtype)

  @nn.compact
  def __call__(self, x, time, cond=None, *, null_cond=None, text_tokens=None, text_mask=None,
               focus_present_mask=None, frame_groups=None):
    self._check_inputs(x, cond, text_tokens)
    batch, frames = x.shape[:2]
    dims = [self.dim] + [self.dim * m for m in self.dim_mults]
    in_out = list(zip(dims[:-1], dims[1:]))
    per_frame = cond is not None and cond.ndim == 3
    null_cond = blocks.null_condition_mask(null_cond, cond, batch, frames)
    if frame_groups is not None and self.temporal_conv:
      raise ValueError("frame_groups (joint image+video training) cannot isolate images from the temporal "
                       "convs of temporal_conv > 0; use temporal_conv=0")
    group_mask = blocks.frame_attention_mask(frame_groups)
    frame_mask = blocks.frame_attention_mask(frame_groups, focus_present_mask, frames)

    maybe_remat = nn.remat if self.remat else (lambda cls: cls)
    resnet_cls = maybe_remat(blocks.ResnetBlock)
    temporal_cls = maybe_remat(blocks.TemporalAttentionBlock)
    spatial_cls = maybe_remat(blocks.SpatialAttentionBlock)
    cross_cls = maybe_remat(blocks.CrossAttentionBlock)
    rotary_dim = min(32, self.attn_dim_head)

    def resnet(features, name, temporal_kernel=self.temporal_conv):
      return resnet_cls(features, dtype=self.dtype, temporal_kernel=temporal_kernel, groups=self.resnet_groups,
                        name=name)

    def temporal(name):
      return temporal_cls(self.attn_heads, self.attn_dim_head, rotary_dim, dtype=self.dtype, name=name)

    def linear_attn(name):
      return spatial_cls(self.attn_heads, _SPATIAL_DIM_HEAD, linear=True, dtype=self.dtype, name=name)

    def cross(name):
      return cross_cls(self.attn_heads, self.attn_dim_head, dtype=self.dtype, name=name)

    pos_bias = embeddings.RelativePositionBias(
        self.attn_heads, num_buckets=_REL_POS_NUM_BUCKETS, max_distance=_REL_POS_MAX_DISTANCE,
        name="time_rel_pos_bias")(frames)

    x = x_in = blocks.constrain_video(x.astype(self.dtype))
    k = self.init_kernel_size
    x = conv.SpaceConv(self.dim, (k, k), padding=k // 2, dtype=self.dtype, name="init_conv")(x)
    if self.max_frames_embedding is not None:
      if frames > self.max_frames_embedding:
        raise ValueError(f"{frames} frames exceed max_frames_embedding={self.max_frames_embedding}")
      table = self.param("frame_emb", nn.with_logical_partitioning(
          nn.initializers.normal(stddev=0.02), (None, "embed")), (self.max_frames_embedding, self.dim),
          jnp.float32)
      x = x + table[:frames].astype(self.dtype)[None, :, None, None, :]
    if self.position_features:
      pos = embeddings.fourier_grid_embedding(x.shape[2], x.shape[3], self.position_features)
      x = x + attention.dense(self.dim, (None, "embed"), name="position_proj", use_bias=False,
                              kernel_init=nn.initializers.zeros_init())(pos).astype(self.dtype)
    x = temporal("init_temporal_attn")(blocks.constrain_video(x), pos_bias, group_mask)
    r = x

    time = jnp.asarray(time)
    if time.ndim == 2 and time.shape != (batch, frames):
      raise ValueError(f"per-frame time must be (B, T) = {(batch, frames)}, got {time.shape}")
    if time.ndim not in (1, 2):
      raise ValueError(f"time must be (B,) or (B, T), got {time.shape}")
    emb = time_emb = blocks.TimestepMLP(self.dim, name="time_mlp")(time)
    if self.cond_dim is not None:
      cond = blocks.null_replaced_cond(self, cond, null_cond, self.cond_dim)

    text = None
    if self.text_token_dim is not None:
      text = self._text_context(text_tokens, text_mask, null_cond)
      if self.text_cond_mlp:
        cond = cond + blocks.TokenPoolMLP(self.text_cond_mlp, self.cond_dim, name="text_cond_mlp")(*text)
    if self.cond_dim is not None:
      if per_frame and emb.ndim == 2:
        emb = jnp.broadcast_to(emb[:, None], (batch, frames, emb.shape[-1]))
      if emb.ndim == 3 and cond.ndim == 2:
        cond = jnp.broadcast_to(cond[:, None], (batch, frames, cond.shape[-1]))
      emb = jnp.concatenate([emb, cond], axis=-1)
    if self.frame_cond_mlp:
      emb = blocks.FrameCondMLP(self.frame_cond_mlp, name="frame_cond_mlp")(emb, frames)

    def attend(x, prefix, space_time=self.space_time_attention == "all"):
      x = temporal(f"{prefix}temporal_attn")(x, pos_bias, frame_mask)
      if space_time:
        x = maybe_remat(blocks.SpaceTimeAttentionBlock)(self.attn_heads, _SPATIAL_DIM_HEAD, dtype=self.dtype,
                                                        name=f"{prefix}space_time_attn")(x, group_mask)
      if text is not None and self.cross_attention:
        x = cross(f"{prefix}cross_attn")(x, *text)
      return x

    skips = []
    for i, (_, dim_out) in enumerate(in_out):
      x = resnet(dim_out, f"downs_{i}_resnet1")(x, emb)
      x = resnet(dim_out, f"downs_{i}_resnet2")(x, emb)
      if self.use_sparse_linear_attn:
        x = linear_attn(f"downs_{i}_spatial_attn")(x)
      x = attend(x, f"downs_{i}_")
      skips.append(x)
      if i < len(in_out) - 1:
        x = blocks.constrain_video(
            conv.SpaceDownsample(dim_out, dtype=self.dtype, name=f"downs_{i}_downsample")(x))

    mid_dim = dims[-1]
    x = resnet(mid_dim, "mid_block1")(x, emb)
    if self.space_time_attention in ("mid", "all"):
      x = maybe_remat(blocks.SpaceTimeAttentionBlock)(self.attn_heads, _SPATIAL_DIM_HEAD, dtype=self.dtype,
                                                      name="mid_space_time_attn")(x, group_mask)
    else:
      x = spatial_cls(self.attn_heads, _SPATIAL_DIM_HEAD, dtype=self.dtype, name="mid_spatial_attn")(x)
    x = attend(x, "mid_", space_time=False)
    x = resnet(mid_dim, "mid_block2")(x, emb)

    for i, (dim_in, _) in enumerate(reversed(in_out)):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = resnet(dim_in, f"ups_{i}_resnet1")(x, emb)
      x = resnet(dim_in, f"ups_{i}_resnet2")(x, emb)
      if self.use_sparse_linear_attn:
        x = linear_attn(f"ups_{i}_spatial_attn")(x)
      x = attend(x, f"ups_{i}_")
      if i < len(in_out) - 1:
        x = blocks.constrain_video(conv.SpaceUpsample(dim_in, dtype=self.dtype, name=f"ups_{i}_upsample")(x))

    x = jnp.concatenate([x, r], axis=-1)
    x = resnet(self.dim, "final_block", temporal_kernel=0)(x, None)
    out_dim = self.channels if self.out_dim is None else self.out_dim
    x = conv.PointwiseConv(out_dim, dtype=self.dtype, name="final_conv")(x)
    if self.input_skip:
      x = x + self._input_skip(x_in, time_emb, out_dim)
    return blocks.constrain_video(x.astype(jnp.float32))

  def _input_skip(self, x_in, time_emb, out_dim):
    """g(t) * W x_in: (B, T, H, W, out); time_emb (B, E) or per frame (B, T, E)."""
    gain = 1.0 + attention.dense(out_dim, ("embed", None), name="input_skip_gain", use_bias=True,
                                 kernel_init=nn.initializers.zeros_init())(nn.silu(time_emb))
    gain = gain[:, None] if gain.ndim == 2 else gain
    skip = conv.PointwiseConv(out_dim, kernel_init=nn.initializers.zeros_init(), dtype=self.dtype,
                              name="input_skip")(x_in)
    return gain[:, :, None, None, :].astype(self.dtype) * skip


class Unconditional(nn.Module):
  """An unconditional `Unet3D` (cond_dim=None, no text inputs) behind the conditional call signature.

  The text-to-video code always passes cond / null_cond / text tokens; this drops them (the output does not
  depend on them, as in the reference's unconditional model) and keeps `focus_present_mask`. The parameter
  tree is exactly the wrapped U-Net's (shared scope, no extra nesting).
  """
  inner: Unet3D

  def setup(self):
    if self.inner.cond_dim is not None or self.inner.text_token_dim is not None:
      raise ValueError("Unconditional wraps a U-Net with cond_dim=None and text_token_dim=None")
    nn.share_scope(self, self.inner)

  def __call__(self, x, time, cond=None, *, null_cond=None, text_tokens=None, text_mask=None,
               focus_present_mask=None, frame_groups=None):
    del cond, null_cond, text_tokens, text_mask
    return self.inner(x, time, focus_present_mask=focus_present_mask, frame_groups=frame_groups)


# ----------------------------------------------------------------------------------------------------------
# torch state_dict key mapping (see the module docstring)

_RESNET_RULES = (
    (r"mlp\.1\.weight", "mlp/kernel", "linear"),
    (r"mlp\.1\.bias", "mlp/bias", "copy"),
    (r"block([12])\.proj\.weight", r"block\1/proj/kernel", "conv"),
    (r"block([12])\.proj\.bias", r"block\1/proj/bias", "copy"),
    (r"block([12])\.norm\.gamma", r"block\1/norm/gamma", "flatten"),
    (r"block([12])\.norm\.weight", r"block\1/norm/scale", "copy"),   # GroupNorm (before 0.7.0)
    (r"block([12])\.norm\.bias", r"block\1/norm/bias", "copy"),
    (r"res_conv\.weight", "res_conv/kernel", "pointwise"),
    (r"res_conv\.bias", "res_conv/bias", "copy"),
)
_ATTN_RULES = (
    (r"fn\.norm\.gamma", "norm/gamma", "flatten"),
    (r"fn\.fn\.fn\.to_qkv\.weight", "attn/to_qkv/kernel", "linear"),
    (r"fn\.fn\.fn\.to_out\.weight", "attn/to_out/kernel", "linear"),
    (r"fn\.fn\.fn\.rotary_emb\.freqs", None, "drop"),
)
_LINEAR_ATTN_RULES = (
    (r"fn\.norm\.gamma", "norm/gamma", "flatten"),
    (r"fn\.fn\.to_qkv\.weight", "attn/to_qkv/kernel", "pointwise"),
    (r"fn\.fn\.to_out\.weight", "attn/to_out/kernel", "pointwise"),
    (r"fn\.fn\.to_out\.bias", "attn/to_out/bias", "copy"),
)
_CONV_RULES = ((r"weight", "kernel", "conv"), (r"bias", "bias", "copy"))
_CONV_T_RULES = ((r"weight", "kernel", "conv_transpose"), (r"bias", "bias", "copy"))
_POINTWISE_RULES = ((r"weight", "kernel", "pointwise"), (r"bias", "bias", "copy"))
_DENSE_RULES = ((r"weight", "kernel", "linear"), (r"bias", "bias", "copy"))


def _prefix_rules(key):
  """Splits a torch key into (flax prefix, remainder, sub-rules)."""
  m = re.fullmatch(r"(downs|ups)\.(\d+)\.(\d)\.(.+)", key)
  if m:
    kind, level, slot, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
    if slot == 4:
      name = "downsample" if kind == "downs" else "upsample"
      return f"{kind}_{level}_{name}", rest, _CONV_RULES if kind == "downs" else _CONV_T_RULES
    rules = {0: _RESNET_RULES, 1: _RESNET_RULES, 2: _LINEAR_ATTN_RULES, 3: _ATTN_RULES}[slot]
    return f"{kind}_{level}_{_SLOTS[slot]}", rest, rules
  fixed = (
      (r"(mid_block[12])\.(.+)", None, _RESNET_RULES),
      (r"(mid_spatial_attn|mid_temporal_attn|init_temporal_attn)\.(.+)", None, _ATTN_RULES),
      (r"(init_conv)\.(.+)", None, _CONV_RULES),
      (r"time_mlp\.1\.(.+)", "time_mlp/dense_in", _DENSE_RULES),
      (r"time_mlp\.3\.(.+)", "time_mlp/dense_out", _DENSE_RULES),
      (r"final_conv\.0\.(.+)", "final_block", _RESNET_RULES),
      (r"final_conv\.1\.(.+)", "final_conv", _POINTWISE_RULES),
  )
  for pattern, prefix, rules in fixed:
    m = re.fullmatch(pattern, key)
    if m:
      return (m.group(1), m.group(2), rules) if prefix is None else (prefix, m.group(1), rules)
  return None


def torch_key_to_flax(key):
  """torch Unet3D state_dict key -> (flax param path tuple, rule), or (None, 'drop') for recomputed buffers.

  Accepts keys with or without GaussianDiffusion's `denoise_fn.` prefix. Raises KeyError for unknown keys.
  """
  key = key.removeprefix("denoise_fn.")
  if key == "time_rel_pos_bias.relative_attention_bias.weight":
    return ("time_rel_pos_bias", "relative_attention_bias"), "copy"
  if key == "null_cond_emb":
    return ("null_cond_emb",), "copy"
  split = _prefix_rules(key)
  if split is not None:
    prefix, rest, rules = split
    for pattern, target, rule in rules:
      if re.fullmatch(pattern, rest):
        if target is None:
          return None, rule
        return tuple(prefix.split("/")) + tuple(re.sub(pattern, target, rest).split("/")), rule
  raise KeyError(f"no Flax counterpart for torch Unet3D key {key!r}")


def convert_torch_value(rule, value):
  """Applies a mapping rule from `torch_key_to_flax` to a torch array (as numpy)."""
  w = np.asarray(value)
  if rule == "copy":
    return w
  if rule == "linear":
    return w.T
  if rule == "flatten":
    return w.reshape(-1)
  if rule == "conv":
    return w[:, :, 0].transpose(2, 3, 1, 0)
  if rule == "conv_transpose":
    return w[:, :, 0].transpose(2, 3, 0, 1)
  if rule == "pointwise":
    return w.reshape(w.shape[0], w.shape[1]).T
  raise ValueError(f"unknown rule {rule!r}")
