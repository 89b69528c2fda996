"""C-ViViT (Villegas et al., "Phenaki"), the causal video tokenizer of phenaki-pytorch 0.5.0, in Flax.

Layouts and values
  video   (B, T, H, W, C) channels-last float, values in [0, 1] (phenaki's range: no [-1, 1] mapping),
          T = 1 + k * temporal_patch_size; an image (B, H, W, C) is a 1-frame video. (H, W) must equal
          `image_size` (an int or a rectangular (H, W)).
  tokens  (B, S, h, w, dim) with S = 1 + k, h = H / ph, w = W / pw: step 0 is the first frame patched alone
          (ph x pw patches), step s >= 1 covers frames 1 + (s-1)*pt .. s*pt (pt x ph x pw patches).
  indices (B, S, h, w) int32 codebook indices.
  output  the reconstruction (B, T, H, W, C), unbounded (a linear layer, as in the reference); images come
          back as 1-frame videos (B, 1, H, W, C).

Encoder: dual-PatchNorm embeddings (LayerNorm -> Dense -> LayerNorm) of patch vectors flattened in torch's
(c, pt, p1, p2) order -> spatial transformer on each step's h*w tokens (2-D continuous position bias) ->
temporal transformer on each position's S steps, causal (ALiBi + causal mask + PEG padded on the past side)
-> quantizer: 'lfq' (default, a power-of-2 codebook_size), 'fsq' (`fsq_levels`) or 'vq' (EMA cosine codebook
of codebook_size codes). Decoder: the mirror (causal temporal transformer, then spatial) -> Dense to pixels.

Causality: tokens of step s depend only on frames of steps <= s, and decoded frames of step s only on tokens
of steps <= s (tests/test_cvivit.py). `reference_compat=True` instead reproduces phenaki-pytorch exactly,
including its non-causal temporal PEG (a reshape that scrambles (b h w) t into b t h w before the conv, so
later frames leak into earlier tokens; research/anchors_pytorch.md 2.10-a) and its self-attention keys and
values taken from the un-normalised input. It exists only to reproduce the outputs of its checkpoints.

Calls (all through `model.apply(variables, ..., method=...)`):
  __call__(video, train=False) -> (reconstruction, indices, aux)
  encode(video, train=False) -> (quantized tokens (B, S, h, w, dim), indices, aux)
  encode_continuous(video) -> pre-quantization tokens;  quantize(tokens, train=False) -> as `encode`
  decode(quantized (B, S, h, w, dim) or (B, S*h*w, dim)) -> video
  decode_indices(indices (B, S, h, w) or (B, S*h*w)) -> video
aux: 'loss' (the quantizer's weighted loss), 'usage', 'perplexity' and the quantizer's own terms.
`train=True` enables the quantizer's training terms (LFQ entropy/commitment; VQ's EMA update, which needs
mutable=['quantizer_stats']) and dropout (rng stream 'dropout', only when attn/ff dropout > 0).

torch state_dict -> Flax params (Linear weights transpose; LayerNorm weight -> scale; `*.beta`, `vq.mask`,
self-attention `null_kv`/`context_norm` and `discr.*` have no counterpart; transformers as in
layers/transformer.py):
  spatial_rel_pos_bias.net.{0.0, 1.0, 2}        -> spatial_rel_pos_bias/net_{0, 1, 2}
  to_patch_emb_first_frame.{1, 2, 3}           -> to_patch_emb_first_frame/{norm_in, proj, norm_out}
  to_patch_emb.{1, 2, 3}                       -> to_patch_emb/{norm_in, proj, norm_out}
  {enc,dec}_{spatial,temporal}_transformer.*   -> {enc,dec}_{spatial,temporal}_transformer/*
  vq.project_{in,out}.{weight, bias}           -> vq/project_{in,out}/{kernel, bias}           (lfq)
  vq._codebook.embed[0], embed_avg[0], cluster_size[0] -> quantizer_stats vq/{embed, embed_avg, cluster_size}
  to_pixels_first_frame.0, to_pixels.0         -> to_pixels_first_frame, to_pixels
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vidgen_jax.layers import attention, quantizers
from vidgen_jax.layers.transformer import ContinuousPositionBias, Transformer, layer_norm

SPATIAL_TOKEN_AXES = ("batch", "tokens", "act_channels")     # (B*S, h*w, D)
TEMPORAL_AXES = ("batch", "frames", "act_channels")          # (B*h*w, S, D)


def _pair(v) -> tuple:
  return (v, v) if isinstance(v, int) else tuple(v)


def patchify(video, patch_size, temporal_patch_size: int):
  """(B, T, H, W, C) -> first (B, 1, h, w, C*ph*pw), rest (B, S-1, h, w, C*pt*ph*pw) in (c, pt, p1, p2) order."""
  b, t, hh, ww, c = video.shape
  (ph, pw), pt = _pair(patch_size), temporal_patch_size
  h, w, s = hh // ph, ww // pw, (t - 1) // pt
  first = video[:, :1].reshape(b, 1, h, ph, w, pw, c).transpose(0, 1, 2, 4, 6, 3, 5)
  rest = video[:, 1:].reshape(b, s, pt, h, ph, w, pw, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
  return first.reshape(b, 1, h, w, c * ph * pw), rest.reshape(b, s, h, w, c * pt * ph * pw)


def unpatchify(first, rest, patch_size, temporal_patch_size: int, channels: int):
  """Inverse of `patchify`: -> video (B, 1 + (S-1)*pt, h*ph, w*pw, C)."""
  (ph, pw), pt, c = _pair(patch_size), temporal_patch_size, channels
  b, _, h, w, _ = first.shape
  s = rest.shape[1]
  first = first.reshape(b, 1, h, w, c, ph, pw).transpose(0, 1, 2, 5, 3, 6, 4).reshape(b, 1, h * ph, w * pw, c)
  rest = rest.reshape(b, s, h, w, c, pt, ph, pw).transpose(0, 1, 5, 2, 6, 3, 7, 4)
  return jnp.concatenate([first, rest.reshape(b, s * pt, h * ph, w * pw, c)], axis=1)


class PatchEmbed(nn.Module):
  """Dual PatchNorm: LayerNorm(patch vector) -> Dense(dim) -> LayerNorm(dim), torch LayerNorms (eps 1e-5).
  The Dense bias starts at zero, not at torch's uniform init: measured better, despite a huge first gradient
  on black patches (README, "The patch projection's bias starts at zero")."""
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, patches):
    x = layer_norm("norm_in", dtype=self.dtype)(patches)
    x = attention.dense(self.dim, (None, "embed"), name="proj", use_bias=True, dtype=self.dtype, flat=True)(x)
    return layer_norm("norm_out", dtype=self.dtype)(x)


class CViViT(nn.Module):
  """The C-ViViT tokenizer (module docstring)."""
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
  codebook_size: int = 4096              # lfq: a power of 2; vq: any; fsq: prod(fsq_levels) (ignored)
  fsq_levels: Sequence[int] = (8, 8, 8, 8)
  quantizer_kwargs: Mapping[str, Any] | None = None   # extra fields of the quantizer (e.g. LFQ weights)
  attn_dropout: float = 0.0
  ff_dropout: float = 0.0
  reference_compat: bool = False
  dtype: Any = jnp.float32               # compute dtype of the layers; params, quantizer, tokens out and video out
                                         # stay float32

  def setup(self):
    (hh, ww), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
    if hh % ph or ww % pw:
      raise ValueError(f"image_size {(hh, ww)} is not divisible by patch_size {(ph, pw)}")
    d, pt, c = self.dim, self.temporal_patch_size, self.channels
    self.to_patch_emb_first_frame = PatchEmbed(d, self.dtype)
    self.to_patch_emb = PatchEmbed(d, self.dtype)
    self.spatial_rel_pos_bias = ContinuousPositionBias(self.heads, dim=d)
    common = dict(heads=self.heads, dim_head=self.dim_head, attn_dropout=self.attn_dropout,
                  ff_dropout=self.ff_dropout, reference_compat=self.reference_compat, dtype=self.dtype)
    temporal = dict(causal=True, peg=True, peg_causal=True, **common)
    self.enc_spatial_transformer = Transformer(self.spatial_depth, **common)
    self.enc_temporal_transformer = Transformer(self.temporal_depth, **temporal)
    self.dec_temporal_transformer = Transformer(self.temporal_depth, **temporal)
    self.dec_spatial_transformer = Transformer(self.spatial_depth, **common)
    kw = dict(self.quantizer_kwargs or {})
    if self.quantizer == "lfq":
      self.vq = quantizers.LFQ(self.codebook_size, d, **kw)
    elif self.quantizer == "fsq":
      self.vq = quantizers.FSQ(tuple(self.fsq_levels), d, **kw)
    elif self.quantizer == "vq":
      self.vq = quantizers.VQ(self.codebook_size, d, **kw)
    else:
      raise ValueError(f"quantizer {self.quantizer!r} unknown; choose lfq, fsq or vq")
    dense = lambda f, name: attention.dense(f, ("embed", None), name=name, use_bias=True, dtype=self.dtype,
                                            flat=True)
    self.to_pixels_first_frame = dense(c * ph * pw, "to_pixels_first_frame")
    self.to_pixels = dense(c * pt * ph * pw, "to_pixels")

  # ---- layout ----
  @property
  def patch_grid(self) -> tuple:
    """(h, w) tokens per step."""
    (hh, ww), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
    return hh // ph, ww // pw

  def num_token_steps(self, frames: int) -> int:
    """S = 1 + (frames - 1) / temporal_patch_size; raises unless frames = 1 + k * temporal_patch_size."""
    if frames < 1 or (frames - 1) % self.temporal_patch_size:
      raise ValueError(f"{frames} frames: C-ViViT needs 1 + k * temporal_patch_size "
                       f"({self.temporal_patch_size}) frames")
    return 1 + (frames - 1) // self.temporal_patch_size

  def token_shape(self, frames: int) -> tuple:
    """(S, h, w) token grid of a `frames`-frame video."""
    return (self.num_token_steps(frames),) + self.patch_grid

  def num_frames(self, steps: int) -> int:
    """Frames decoded from S token steps."""
    return 1 + (steps - 1) * self.temporal_patch_size

  def _as_video(self, video):
    if video.ndim == 4:
      video = video[:, None]
    hh, ww = _pair(self.image_size)
    if video.ndim != 5 or video.shape[2:] != (hh, ww, self.channels):
      raise ValueError(f"expected video (B, T, {hh}, {ww}, {self.channels}) or image (B, {hh}, {ww}, "
                       f"{self.channels}), got {video.shape}")
    self.num_token_steps(video.shape[1])
    return video

  # ---- transformers over the token grid (B, S, h, w, D) ----
  def _spatial(self, transformer, tokens, deterministic):
    b, s, h, w, d = tokens.shape
    x = nn.with_logical_constraint(tokens.reshape(b * s, h * w, d), SPATIAL_TOKEN_AXES)
    x = transformer(x, bias=self.spatial_rel_pos_bias(h, w), deterministic=deterministic)
    return nn.with_logical_constraint(x, SPATIAL_TOKEN_AXES).reshape(tokens.shape)

  def _temporal(self, transformer, tokens, deterministic):
    b, s, h, w, d = tokens.shape
    x = nn.with_logical_constraint(tokens.transpose(0, 2, 3, 1, 4).reshape(b * h * w, s, d), TEMPORAL_AXES)
    from_seq = lambda x: x.reshape(b, h, w, s, -1).transpose(0, 3, 1, 2, 4)
    if self.reference_compat:     # phenaki-pytorch: a plain reshape of (b h w) t to (b, t, h, w): scrambled
      layout = dict(video_shape=(b, s, h, w))
    else:
      to_seq = lambda v: v.transpose(0, 2, 3, 1, 4).reshape(b * h * w, s, -1)
      layout = dict(to_video=from_seq, from_video=to_seq)
    x = transformer(x, deterministic=deterministic, **layout)
    return from_seq(nn.with_logical_constraint(x, TEMPORAL_AXES))

  # ---- encoder ----
  def encode_continuous(self, video, deterministic: bool = True):
    """Pre-quantization tokens (B, S, h, w, dim) of a [0, 1] video (B, T, H, W, C) or image (B, H, W, C)."""
    video = self._as_video(video).astype(self.dtype)
    first, rest = patchify(video, self.patch_size, self.temporal_patch_size)
    tokens = self.to_patch_emb_first_frame(first)
    if rest.shape[1]:
      tokens = jnp.concatenate([tokens, self.to_patch_emb(rest)], axis=1)
    tokens = self._spatial(self.enc_spatial_transformer, tokens, deterministic)
    return self._temporal(self.enc_temporal_transformer, tokens, deterministic).astype(jnp.float32)

  def quantize(self, tokens, train: bool = False):
    """(B, S, h, w, dim) -> (quantized (B, S, h, w, dim), indices (B, S, h, w) int32, aux)."""
    quantized, indices, aux = self.vq(tokens, train=train)
    return quantized.astype(jnp.float32), indices, aux

  def encode(self, video, train: bool = False):
    return self.quantize(self.encode_continuous(video, deterministic=not train), train=train)

  # ---- decoder ----
  def decode(self, quantized, deterministic: bool = True):
    """Video (B, 1 + (S-1)*pt, H, W, C) from quantized tokens (B, S, h, w, dim) or (B, S*h*w, dim)."""
    h, w = self.patch_grid
    if quantized.ndim == 3:
      quantized = quantized.reshape(quantized.shape[0], -1, h, w, quantized.shape[-1])
    tokens = self._temporal(self.dec_temporal_transformer, quantized.astype(self.dtype), deterministic)
    tokens = self._spatial(self.dec_spatial_transformer, tokens, deterministic)
    first = self.to_pixels_first_frame(tokens[:, :1])
    rest = self.to_pixels(tokens[:, 1:])
    return unpatchify(first, rest, self.patch_size, self.temporal_patch_size, self.channels).astype(jnp.float32)

  def decode_indices(self, indices):
    """Video from indices (B, S, h, w) or flattened (B, S*h*w)."""
    h, w = self.patch_grid
    if indices.ndim == 2:
      indices = indices.reshape(indices.shape[0], -1, h, w)
    return self.decode(self.vq.decode_indices(indices))

  def __call__(self, video, train: bool = False):
    quantized, indices, aux = self.encode(video, train=train)
    return self.decode(quantized, deterministic=not train), indices, aux
