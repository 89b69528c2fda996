"""MaskGIT text-to-video-token transformer and Token-Critic (Phenaki), in Flax.

`MaskGit(tokens (B, N) int32 in [0, num_tokens] (num_tokens = mask_id), text (B, L, Dc), text_mask (B, L),
null (B,) bool, video_shape=(t, h, w))` -> logits (B, N, num_tokens). Tokens are the C-ViViT indices of a
(t, h, w) token grid flattened row-major. Token + learned absolute position embeddings (the embedding
gradient scaled by `gradient_shrink_alpha`, the CogView trick of the reference), a bidirectional
transformer with a non-causal PEG over the (t, h, w) grid, a 3-D continuous position bias in every
self-attention, and cross-attention to the text with 2 learned null key/values. `null` True masks every
text token, so the sample sees only the null key/values: the learned null text of classifier-free guidance.

`TokenCritic` is the same trunk with a (B, N) "this token is fake" logit head (no position bias, as in the
reference).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.layers import attention
from vidgen_jax.layers.transformer import ContinuousPositionBias, Transformer


def _shrink_gradient(x, alpha):
  return x * alpha + jax.lax.stop_gradient(x) * (1 - alpha)


class _Trunk(nn.Module):
  num_tokens: int
  dim: int
  depth: int
  max_seq_len: int
  heads: int
  dim_head: int
  cross_attention: bool
  position_bias: bool
  gradient_shrink_alpha: float = 0.1
  reference_compat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, text=None, text_mask=None, null=None, video_shape=None):
    b, n = tokens.shape
    if n > self.max_seq_len:
      raise ValueError(f"{n} tokens exceed max_seq_len={self.max_seq_len}")
    if video_shape is None or int(np.prod(video_shape)) != n:
      raise ValueError(f"video_shape {video_shape} must multiply to the {n} tokens")
    emb = nn.Embed(self.num_tokens + 1, self.dim, name="token_emb")(tokens)
    emb = _shrink_gradient(emb, self.gradient_shrink_alpha)
    x = emb + nn.Embed(self.max_seq_len, self.dim, name="pos_emb")(jnp.arange(n))[None]
    bias = ContinuousPositionBias(self.heads, self.dim_head, name="continuous_pos_bias")(*video_shape) \
        if self.position_bias else None
    t, h, w = video_shape
    to_video = lambda s: s.reshape(b, t, h, w, -1)
    from_video = lambda v: v.reshape(b, n, -1)
    context_mask = None
    if self.cross_attention:
      if text is None:
        raise ValueError("a conditional model needs text embeddings")
      context_mask = jnp.ones(text.shape[:2], bool) if text_mask is None else text_mask.astype(bool)
      if null is not None:
        context_mask = context_mask & ~null[:, None]
    return Transformer(self.depth, heads=self.heads, dim_head=self.dim_head, peg=True, peg_causal=False,
                       cross_attention=self.cross_attention, num_null_kv=2,
                       reference_compat=self.reference_compat, dtype=self.dtype, name="transformer")(
        x, bias=bias, context=text, context_mask=context_mask, to_video=to_video, from_video=from_video)


class MaskGit(nn.Module):
  num_tokens: int
  dim: int
  depth: int
  max_seq_len: int
  heads: int = 8
  dim_head: int = 64
  unconditional: bool = False
  gradient_shrink_alpha: float = 0.1
  reference_compat: bool = False   # phenaki-pytorch: self-attention k/v from the un-normed input; logit bias
  dtype: jnp.dtype = jnp.float32   # compute dtype of the layers; params, residual stream and logits stay float32

  @property
  def mask_id(self) -> int:
    return self.num_tokens

  @nn.compact
  def __call__(self, tokens, text=None, text_mask=None, null=None, *, video_shape):
    x = _Trunk(self.num_tokens, self.dim, self.depth, self.max_seq_len, self.heads, self.dim_head,
               cross_attention=not self.unconditional, position_bias=True,
               gradient_shrink_alpha=self.gradient_shrink_alpha, reference_compat=self.reference_compat,
               dtype=self.dtype, name="trunk")(tokens, text, text_mask, null, video_shape)
    return attention.dense(self.num_tokens, ("embed", "vocab"), name="to_logits", use_bias=self.reference_compat,
                           dtype=self.dtype, flat=True)(x).astype(jnp.float32)


class TokenCritic(nn.Module):
  num_tokens: int
  dim: int
  depth: int
  max_seq_len: int
  heads: int = 8
  dim_head: int = 64
  cross_attention: bool = True
  reference_compat: bool = False   # phenaki-pytorch: self-attention k/v from the un-normed input
  dtype: jnp.dtype = jnp.float32   # as MaskGit.dtype

  @nn.compact
  def __call__(self, tokens, text=None, text_mask=None, null=None, *, video_shape):
    x = _Trunk(self.num_tokens, self.dim, self.depth, self.max_seq_len, self.heads, self.dim_head,
               cross_attention=self.cross_attention, position_bias=False,
               reference_compat=self.reference_compat, dtype=self.dtype, name="trunk")(
        tokens, text, text_mask, null, video_shape)
    return attention.dense(1, ("embed", None), name="to_logits", use_bias=True, dtype=self.dtype,
                           flat=True)(x)[..., 0].astype(jnp.float32)
