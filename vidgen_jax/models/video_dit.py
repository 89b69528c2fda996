"""A video diffusion transformer (DiT, Peebles & Xie 2023, over space-time tokens): our addition to the
video-diffusion family, a drop-in replacement for `Unet3D` (same call, same diffusion maths, same samplers).

Why it is here: the 3-D U-Net's attention is factorised (per-frame spatial, per-pixel temporal), so moving an
object from where it is in frame f to where it must be in frame g takes several layers of convs and temporal
attention. Every token of this model attends to every token of every frame, so "the object at p in frame f is
at p + v (g - f) in frame g" is one attention step; MaskGIT, a transformer over the same kind of grid, learns
the moving-shapes motions where the U-Net does not (README, Results).

Call: `VideoDiT(...)(x (B, T, H, W, C), time (B,) or (B, T), cond (B, Dc) or (B, T, Dc), *, null_cond,
text_tokens (B, [T,] L, Dt), text_mask, focus_present_mask, frame_groups)` -> (B, T, H, W, C). Wrap it in
`patched.Patched` for patch (and tubelet) tokens: each (t, h, w) position of x is one token.

* tokens: Dense(C -> dim) plus fixed 3-D sin/cos embeddings of (frame, row, column): absolute positions, so
  the model can place an object at a different place in each frame even from pure noise;
* conditioning (adaLN-zero): c = Dense(time MLP) + Dense(pooled text, or a learned null embedding); every
  block modulates its two LayerNorms by (shift, scale) and gates its residuals by zero-initialised functions
  of c, so the network starts as the identity and its output (a zero-initialised Dense) as 0;
* blocks: full self-attention over all T*H*W tokens (key masks for joint image training and focus-present),
  cross-attention to the text tokens (with an always-present null key/value, zero-initialised output),
  a GELU MLP;
* per-frame time or conditions (per-frame noise levels, joint image+video training) modulate each frame's
  tokens with that frame's c; per-frame text tokens are attended by that frame's tokens only.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vidgen_jax.layers import attention, embeddings, norms
from vidgen_jax.models import unet3d_blocks as blocks


def sincos_3d(frames: int, height: int, width: int, dim: int):
  """(frames, height, width, dim) float32 fixed position embedding: [sin | cos] of the frame index in the
  first dim - 2 s channels and of the row and the column in s = 2 * (dim // 6) channels each."""
  s = 2 * (dim // 6)
  if s < 4 or dim - 2 * s < 4:
    raise ValueError(f"sincos_3d needs dim >= 12, got {dim}")
  f = embeddings.sinusoidal_embedding(jnp.arange(frames), dim - 2 * s)
  r = embeddings.sinusoidal_embedding(jnp.arange(height), s)
  c = embeddings.sinusoidal_embedding(jnp.arange(width), s)
  shape = (frames, height, width)
  return jnp.concatenate([jnp.broadcast_to(f[:, None, None], shape + f.shape[-1:]),
                          jnp.broadcast_to(r[None, :, None], shape + r.shape[-1:]),
                          jnp.broadcast_to(c[None, None], shape + c.shape[-1:])], axis=-1)


def _modulate(x, shift, scale):
  return x * (1 + scale) + shift


def _plain_norm(name):
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, name=name)


class DiTBlock(nn.Module):
  """adaLN-zero block on x (B, T, N, D) (N tokens per frame) with c (B, T or 1, 1, D)."""
  heads: int
  dim_head: int
  mlp_ratio: float = 4.0
  cross_attention: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c, context=None, context_mask=None, attn_mask=None):
    b, t, n, d = x.shape
    mods = attention.dense(6 * d, ("embed", "mlp"), name="adaln", use_bias=True,
                           kernel_init=nn.initializers.zeros_init())(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mods.astype(self.dtype), 6, axis=-1)
    y = _modulate(_plain_norm("norm1")(x), shift1, scale1).astype(self.dtype)
    y = attention.Attention(self.heads, self.dim_head, dtype=self.dtype, name="attn")(
        y.reshape(b, t * n, d), mask=attn_mask).reshape(b, t, n, d)
    x = x + gate1 * y
    if self.cross_attention and context is not None:
      y = norms.ChannelLayerNorm(dtype=self.dtype, name="norm_cross")(x)
      cross = attention.CrossAttention(self.heads, self.dim_head, dtype=self.dtype, name="cross_attn")
      if context.ndim == 4:                    # per-frame text: frame f's tokens attend to frame f's text
        y = cross(y.reshape(b * t, n, d), context.reshape(b * t, *context.shape[2:]),
                  context_mask.reshape(b * t, -1)).reshape(b, t, n, d)
      else:
        y = cross(y.reshape(b, t * n, d), context, context_mask).reshape(b, t, n, d)
      x = x + y
    y = _modulate(_plain_norm("norm2")(x), shift2, scale2).astype(self.dtype)
    hidden = int(self.mlp_ratio * d)
    y = attention.dense(hidden, ("embed", "mlp"), name="mlp_in", use_bias=True, dtype=self.dtype, flat=True)(y)
    y = attention.dense(d, ("mlp", "embed"), name="mlp_out", use_bias=True, dtype=self.dtype, flat=True)(
        nn.gelu(y, approximate=True))
    return x + gate2 * y


class VideoDiT(nn.Module):
  """Diffusion transformer over a (B, T, H, W, C) token video (module docstring)."""
  dim: int = 128
  depth: int = 6
  heads: int = 4
  dim_head: int = 32
  channels: int = 3
  out_dim: int | None = None
  cond_dim: int | None = None
  text_token_dim: int | None = None
  cross_attention: bool = True
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  remat: bool = False

  def __post_init__(self):
    if self.depth < 1:
      raise ValueError(f"VideoDiT needs depth >= 1, got {self.depth}")
    if self.dim < 12:
      raise ValueError(f"VideoDiT needs dim >= 12 (3-D sin/cos positions), got {self.dim}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, time, cond=None, *, null_cond=None, text_tokens=None, text_mask=None,
               focus_present_mask=None, frame_groups=None):
    b, t, h, w, ch = x.shape
    if ch != self.channels:
      raise ValueError(f"input has {ch} channels, the model was built for channels={self.channels}")
    if (self.cond_dim is None) != (cond is None):
      raise ValueError("cond must be given exactly when cond_dim is set "
                       f"(cond_dim={self.cond_dim}, cond given: {cond is not None})")
    time = jnp.asarray(time)
    if time.shape not in ((b,), (b, t)):
      raise ValueError(f"time must be (B,) = {(b,)} or (B, T) = {(b, t)}, got {time.shape}")
    null_cond = blocks.null_condition_mask(null_cond, cond, b, t)

    tokens = attention.dense(self.dim, (None, "embed"), name="to_tokens", use_bias=True, flat=True)(
        x.astype(jnp.float32))
    tokens = (tokens + sincos_3d(t, h, w, self.dim)).astype(self.dtype).reshape(b, t, h * w, self.dim)

    temb = blocks.TimestepMLP(self.dim, name="time_mlp")(time)           # (B, 4 dim) or (B, T, 4 dim)
    c = attention.dense(self.dim, ("mlp", "embed"), name="time_proj", use_bias=True)(nn.silu(temb))
    if self.cond_dim is not None:
      cond = blocks.null_replaced_cond(self, cond, null_cond, self.cond_dim)
      cond = attention.dense(self.dim, ("cond", None), name="cond_proj", use_bias=True)(cond)
      c = (c[:, None] if c.ndim == 2 and cond.ndim == 3 else c) + (
          cond[:, None] if cond.ndim == 2 and c.ndim == 3 else cond)
    c = (c[:, None, None] if c.ndim == 2 else c[:, :, None]).astype(jnp.float32)   # (B, T or 1, 1, dim)

    context = context_mask = None
    if self.text_token_dim is not None and self.cross_attention:
      if text_tokens is None:
        raise ValueError("this model attends to text tokens: pass text_tokens (and text_mask)")
      if text_tokens.shape[-1] != self.text_token_dim:
        raise ValueError(f"text_tokens {text_tokens.shape} need text_token_dim={self.text_token_dim} channels")
      context, context_mask = blocks.text_context(text_tokens, text_mask, null_cond, self.dtype)

    frame_mask = blocks.frame_attention_mask(frame_groups, focus_present_mask, t)   # (B, T, T) or None
    attn_mask = None
    if frame_mask is not None:
      attn_mask = jnp.repeat(jnp.repeat(frame_mask, h * w, axis=1), h * w, axis=2)[:, None]   # (B, 1, N, N)

    block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      tokens = block_cls(self.heads, self.dim_head, self.mlp_ratio, self.cross_attention, dtype=self.dtype,
                         name=f"block_{i}")(tokens, c, context, context_mask, attn_mask)

    shift, scale = jnp.split(attention.dense(2 * self.dim, ("embed", "mlp"), name="final_adaln", use_bias=True,
                                             kernel_init=nn.initializers.zeros_init())(nn.silu(c)), 2, axis=-1)
    y = _modulate(_plain_norm("final_norm")(tokens.astype(jnp.float32)), shift, scale)
    out = attention.dense(self.out_dim or self.channels, ("embed", None), name="to_out", use_bias=True,
                          kernel_init=nn.initializers.zeros_init(), flat=True)(y)
    return out.reshape(b, t, h, w, -1).astype(jnp.float32)
