"""C-ViViT (Villegas et al., "Phenaki"), the causal video tokenizer, channels-last in Flax.

Video (B, T, H, W, C) in [0, 1] (phenaki's range; no [-1, 1] mapping) with T = 1 + k * temporal_patch, or an
image (B, H, W, C) = a 1-frame video. The first frame is patched alone (ph x pw patches), the other frames
in pt x ph x pw spatio-temporal patches, so the token grid is (B, 1 + k, H/ph, W/pw) and every token step
covers whole frames. Encoder: dual-PatchNorm embedding -> spatial transformer per token step (continuous
position bias) -> temporal transformer per position, causal (ALiBi + causal mask + causal PEG) ->
quantizer (fsq | lfq | vq). Decoder: the mirror (causal temporal, then spatial) -> linear to pixels
(unbounded, as in the reference).

Causality: the tokens of step s depend only on frames of steps <= s, and the decoded frames of step s only on
tokens of steps <= s (tests/test_cvivit.py). `reference_compat=True` instead reproduces phenaki-pytorch
0.5.0's temporal PEG (padding one frame on both sides), which leaks the next step into every token; it is
there only to reproduce that reference's checkpoints.

Call: `model.apply(variables, video, train=False)` -> (reconstruction, indices (B, t, h, w), aux);
methods `encode` (-> quantized (B, t, h, w, D), indices, aux) and `decode_indices` (indices -> video).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vidgen_jax.layers import attention, quantizers
from vidgen_jax.layers.transformer import ContinuousPositionBias, Transformer


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class CViViT(nn.Module):
  dim: int
  image_size: int | Sequence[int]
  patch_size: int | Sequence[int]
  temporal_patch_size: int
  spatial_depth: int
  temporal_depth: int
  heads: int = 8
  dim_head: int = 64
  channels: int = 3
  quantizer: str = "lfq"                 # lfq | fsq | vq
  codebook_size: int = 4096              # lfq: a power of 2; vq: any; fsq: prod(fsq_levels)
  fsq_levels: Sequence[int] = (8, 8, 8, 8)
  reference_compat: bool = False

  def setup(self):
    h, w = _pair(self.image_size)
    ph, pw = _pair(self.patch_size)
    if h % ph or w % pw:
      raise ValueError(f"image_size {(h, w)} is not divisible by patch_size {(ph, pw)}")
    d = self.dim
    self.first_embed = _PatchEmbed(d, name="to_patch_emb_first_frame")
    self.embed = _PatchEmbed(d, name="to_patch_emb")
    self.spatial_bias = ContinuousPositionBias(self.heads, name="spatial_rel_pos_bias")
    tf = dict(heads=self.heads, dim_head=self.dim_head)
    temporal = dict(causal=True, peg=True, peg_causal=True, reference_compat=self.reference_compat, **tf)
    self.enc_spatial = Transformer(self.spatial_depth, name="enc_spatial_transformer", **tf)
    self.enc_temporal = Transformer(self.temporal_depth, name="enc_temporal_transformer", **temporal)
    self.dec_temporal = Transformer(self.temporal_depth, name="dec_temporal_transformer", **temporal)
    self.dec_spatial = Transformer(self.spatial_depth, name="dec_spatial_transformer", **tf)
    if self.quantizer == "lfq":
      self.vq = quantizers.LFQ(self.codebook_size, d, name="vq")
    elif self.quantizer == "fsq":
      self.vq = quantizers.FSQ(tuple(self.fsq_levels), d, name="vq")
    elif self.quantizer == "vq":
      self.vq = quantizers.VQ(self.codebook_size, d, name="vq")
    else:
      raise ValueError(f"quantizer {self.quantizer!r} unknown; choose lfq, fsq or vq")
    pt = self.temporal_patch_size
    self.to_pixels_first_frame = attention.dense(self.channels * ph * pw, ("embed", None), name="to_pixels_first_frame",
                                                 use_bias=True)
    self.to_pixels = attention.dense(self.channels * pt * ph * pw, ("embed", None), name="to_pixels", use_bias=True)

  # ---- layout helpers ----
  def num_token_steps(self, frames: int) -> int:
    if frames < 1 or (frames - 1) % self.temporal_patch_size:
      raise ValueError(f"{frames} frames: need 1 + k * temporal_patch_size ({self.temporal_patch_size}) frames")
    return 1 + (frames - 1) // self.temporal_patch_size

  def _patchify(self, video):
    b, t, h, w, c = video.shape
    ph, pw = _pair(self.patch_size)
    pt = self.temporal_patch_size
    gh, gw = h // ph, w // pw
    first = video[:, :1].reshape(b, 1, gh, ph, gw, pw, c).transpose(0, 1, 2, 4, 3, 5, 6)
    first = first.reshape(b, 1, gh, gw, ph * pw * c)
    rest = video[:, 1:].reshape(b, (t - 1) // pt, pt, gh, ph, gw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    rest = rest.reshape(b, (t - 1) // pt, gh, gw, pt * ph * pw * c)
    return first, rest

  def _unpatchify(self, first, rest):
    b, _, gh, gw, _ = first.shape
    ph, pw = _pair(self.patch_size)
    pt, c = self.temporal_patch_size, self.channels
    first = first.reshape(b, 1, gh, gw, ph, pw, c).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, 1, gh * ph, gw * pw, c)
    s = rest.shape[1]
    rest = rest.reshape(b, s, gh, gw, pt, ph, pw, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    rest = rest.reshape(b, s * pt, gh * ph, gw * pw, c)
    return jnp.concatenate([first, rest], axis=1)

  def _check(self, video):
    if video.ndim == 4:
      video = video[:, None]
    h, w = _pair(self.image_size)
    if video.ndim != 5 or video.shape[2:] != (h, w, self.channels):
      raise ValueError(f"expected video (B, T, {h}, {w}, {self.channels}) or image (B, {h}, {w}, "
                       f"{self.channels}), got {video.shape}")
    self.num_token_steps(video.shape[1])
    return video

  # ---- transformers over the token grid (B, S, gh, gw, D) ----
  def _spatial(self, transformer, tokens):
    b, s, gh, gw, d = tokens.shape
    bias = self.spatial_bias(gh, gw)
    return transformer(tokens.reshape(b * s, gh * gw, d), bias=bias).reshape(tokens.shape)

  def _temporal(self, transformer, tokens):
    b, s, gh, gw, d = tokens.shape
    seq = tokens.transpose(0, 2, 3, 1, 4).reshape(b * gh * gw, s, d)
    to_video = lambda x: x.reshape(b, gh, gw, s, d).transpose(0, 3, 1, 2, 4)
    from_video = lambda v: v.transpose(0, 2, 3, 1, 4).reshape(b * gh * gw, s, d)
    out = transformer(seq, to_video=to_video, from_video=from_video)
    return to_video(out)

  def encode_continuous(self, video):
    """Pre-quantization tokens (B, S, gh, gw, D) of a [0, 1] video or image."""
    video = self._check(video)
    first, rest = self._patchify(video)
    tokens = self.first_embed(first)
    if rest.shape[1]:
      tokens = jnp.concatenate([tokens, self.embed(rest)], axis=1)
    tokens = self._spatial(self.enc_spatial, tokens)
    return self._temporal(self.enc_temporal, tokens)

  def encode(self, video, train: bool = False):
    z = self.encode_continuous(video)
    return self.vq(z, train=train)

  def decode(self, quantized):
    """Video (B, 1 + (S - 1) * pt, H, W, C) from quantized tokens (B, S, gh, gw, D)."""
    tokens = self._temporal(self.dec_temporal, quantized)
    tokens = self._spatial(self.dec_spatial, tokens)
    first = self.to_pixels_first_frame(tokens[:, :1])
    rest = self.to_pixels(tokens[:, 1:])
    return self._unpatchify(first, rest)

  def decode_indices(self, indices):
    return self.decode(self.vq.decode_indices(indices))

  def __call__(self, video, train: bool = False):
    quantized, indices, aux = self.encode(video, train=train)
    return self.decode(quantized), indices, aux


class _PatchEmbed(nn.Module):
  """Dual PatchNorm: LayerNorm(patch) -> Dense(dim) -> LayerNorm."""
  dim: int

  @nn.compact
  def __call__(self, patches):
    h = nn.LayerNorm(name="norm_in")(patches)
    h = attention.dense(self.dim, (None, "embed"), name="proj", use_bias=True)(h)
    return nn.LayerNorm(name="norm_out")(h)
