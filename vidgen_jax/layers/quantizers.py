"""Vector quantizers for video tokenizers (C-ViViT): FSQ, LFQ and an EMA cosine-similarity VQ, plus stats.

Every quantizer maps z (..., D) to (z_q (..., D), indices (...) int32, aux dict) with a straight-through
gradient (z_q = z + stop_gradient(q − z) before any output projection), so the encoder is trained through
it. aux holds 'loss' (the term to add to the training loss, already weighted) and per-batch statistics.

* `FSQ(levels)` (Mentzer et al. 2023): project to len(levels) dims, bound each with tanh to its level count,
  round. The codebook is the implicit grid, size prod(levels); no auxiliary loss, no collapse by design.
* `LFQ(codebook_size)` (MAGVIT-v2; phenaki-pytorch's default): project to log2(K) dims, quantize each to
  ±1; index = the bit pattern. aux loss = entropy_weight * (mean per-sample entropy − diversity_gamma *
  entropy of the batch-mean code distribution), computed on soft assignments over all K codes (so K is
  kept moderate, ≤ 2^16), plus commitment_weight * ||z − sign(z)||².
* `VQ(codebook_size)`: l2-normalised codes and inputs (cosine similarity, phenaki's VQ alternative); the
  codebook is updated by EMA of the assigned inputs (decay 0.8 by default), not by gradients. Its codebook
  and EMA statistics live in the mutable collection 'quantizer' (apply with mutable=['quantizer'] while
  training; `reseed_dead_codes` replaces codes unused for too long with batch inputs).
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidgen_jax.layers import attention

_EPS = 1e-5


def codebook_usage(indices, codebook_size: int):
  """Fraction of the codebook's codes that occur in `indices`."""
  counts = jnp.zeros((codebook_size,), jnp.int32).at[indices.reshape(-1)].add(1)
  return jnp.mean(counts > 0)


def perplexity(indices, codebook_size: int):
  """exp(entropy) of the empirical code distribution: K when all codes are equally used, 1 on collapse."""
  counts = jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0)))


def _straight_through(z, q):
  return z + jax.lax.stop_gradient(q - z)


def _stats(indices, codebook_size):
  return {"usage": codebook_usage(indices, codebook_size), "perplexity": perplexity(indices, codebook_size)}


class FSQ(nn.Module):
  """Finite scalar quantization with `levels` per dimension (e.g. (8, 5, 5, 5) = 1000 codes)."""
  levels: Sequence[int]
  dim: int

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  def bound(self, h):
    """tanh-bounded values whose rounding gives the integers -L//2 .. (L-1)//2 of each level count L."""
    levels = jnp.asarray(self.levels, jnp.float32)
    half = (levels - 1) * (1 - 1e-3) / 2
    offset = jnp.where(levels % 2 == 0, 0.5, 0.0)       # even L: the grid is shifted by a half
    shift = jnp.arctanh(offset / half)
    return jnp.tanh(h + shift) * half - offset

  def _basis(self):
    levels = jnp.asarray(self.levels, jnp.int32)
    return levels, jnp.cumprod(jnp.concatenate([jnp.ones((1,), jnp.int32), levels[:-1]]))

  def codes_to_indices(self, codes):
    """Integer grid values (..., len(levels)) -> int32 indices in [0, prod(levels)), first level fastest."""
    levels, basis = self._basis()
    digits = jnp.round(codes).astype(jnp.int32) + levels // 2
    return jnp.sum(digits * basis, axis=-1)

  def indices_to_codes(self, indices):
    levels, basis = self._basis()
    return ((indices[..., None] // basis) % levels - levels // 2).astype(jnp.float32)

  def _normalise(self, codes):
    return codes / jnp.asarray([max(l // 2, 1) for l in self.levels], jnp.float32)

  def setup(self):
    self.project_in = attention.dense(len(self.levels), ("embed", None), name="project_in", use_bias=True)
    self.project_out = attention.dense(self.dim, (None, "embed"), name="project_out", use_bias=True)

  def __call__(self, z, train: bool = False):
    bounded = self.bound(self.project_in(z))
    codes = _straight_through(bounded, jnp.round(bounded))
    indices = self.codes_to_indices(jax.lax.stop_gradient(codes))
    out = self.project_out(self._normalise(codes))
    return out, indices, {"loss": jnp.zeros((), jnp.float32), **_stats(indices, self.codebook_size)}

  def decode_indices(self, indices):
    return self.project_out(self._normalise(self.indices_to_codes(indices)))


class LFQ(nn.Module):
  """Lookup-free quantization to log2(codebook_size) sign bits."""
  codebook_size: int
  dim: int
  entropy_weight: float = 0.1
  diversity_gamma: float = 1.0
  commitment_weight: float = 0.25
  temperature: float = 1.0

  def __post_init__(self):
    if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
      raise ValueError(f"LFQ needs a power-of-2 codebook_size, got {self.codebook_size}")
    super().__post_init__()

  @property
  def bits(self) -> int:
    return int(math.log2(self.codebook_size))

  def bits_to_indices(self, bits):
    """±1 bits (..., B), most significant first -> int32 indices."""
    weights = 2 ** jnp.arange(self.bits - 1, -1, -1, dtype=jnp.int32)
    return jnp.sum((bits > 0).astype(jnp.int32) * weights, axis=-1)

  def indices_to_bits(self, indices):
    weights = 2 ** jnp.arange(self.bits - 1, -1, -1, dtype=jnp.int32)
    return jnp.where((indices[..., None] & weights) > 0, 1.0, -1.0)

  def entropy_loss(self, h):
    """mean per-token entropy − gamma * entropy of the mean assignment, over all K codes (soft)."""
    codes = self.indices_to_bits(jnp.arange(self.codebook_size))                 # (K, B)
    logits = 2.0 * jnp.einsum("...b,kb->...k", h.astype(jnp.float32), codes) / self.temperature
    probs = jax.nn.softmax(logits.reshape(-1, self.codebook_size), axis=-1)
    per_token = -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-9), axis=-1))
    mean = probs.mean(axis=0)
    batch = -jnp.sum(mean * jnp.log(mean + 1e-9))
    return per_token - self.diversity_gamma * batch

  def setup(self):
    self.project_in = attention.dense(self.bits, ("embed", None), name="project_in", use_bias=True)
    self.project_out = attention.dense(self.dim, (None, "embed"), name="project_out", use_bias=True)

  def __call__(self, z, train: bool = False):
    h = self.project_in(z)
    q = jnp.where(h > 0, 1.0, -1.0)
    codes = _straight_through(h, q)
    indices = self.bits_to_indices(jax.lax.stop_gradient(q))
    out = self.project_out(codes)
    entropy = self.entropy_loss(h)
    commit = jnp.mean(jnp.square(h - jax.lax.stop_gradient(q)))
    loss = self.entropy_weight * entropy + self.commitment_weight * commit
    return out, indices, {"loss": loss, "entropy_aux": entropy, "commitment": commit,
                          **_stats(indices, self.codebook_size)}

  def decode_indices(self, indices):
    return self.project_out(self.indices_to_bits(indices))


def _l2norm(x):
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)   # finite gradient at 0


class VQ(nn.Module):
  """EMA vector quantizer with cosine similarity (codes and inputs on the unit sphere).

  Collection 'quantizer': 'embed' (K, D) the codebook, 'embed_avg' (K, D) and 'cluster_size' (K,) the EMA
  statistics, 'unused_steps' (K,) int32 steps since each code was last assigned. The EMA update runs when
  the collection is mutable and `train` is True.
  """
  codebook_size: int
  dim: int
  decay: float = 0.8
  commitment_weight: float = 1.0

  @nn.compact
  def __call__(self, z, train: bool = False):
    k = self.codebook_size
    embed = self.variable("quantizer", "embed", lambda: _l2norm(
        jax.random.normal(self.make_rng("params"), (k, self.dim), jnp.float32)))
    embed_avg = self.variable("quantizer", "embed_avg", lambda: embed.value)
    cluster_size = self.variable("quantizer", "cluster_size", lambda: jnp.ones((k,), jnp.float32))
    unused = self.variable("quantizer", "unused_steps", lambda: jnp.zeros((k,), jnp.int32))
    zn = _l2norm(z.astype(jnp.float32))
    flat = zn.reshape(-1, self.dim)
    indices = jnp.argmax(flat @ embed.value.T, axis=-1)
    q = embed.value[indices].reshape(zn.shape)
    if train and self.is_mutable_collection("quantizer"):
      onehot = jax.nn.one_hot(indices, k, dtype=jnp.float32)
      counts = onehot.sum(0)
      cluster_size.value = self.decay * cluster_size.value + (1 - self.decay) * counts
      embed_avg.value = self.decay * embed_avg.value + (1 - self.decay) * (onehot.T @ flat)
      embed.value = _l2norm(embed_avg.value / jnp.maximum(cluster_size.value[:, None], _EPS))
      unused.value = jnp.where(counts > 0, 0, unused.value + 1)
    commit = jnp.mean(jnp.square(zn - jax.lax.stop_gradient(q)))
    indices = indices.reshape(z.shape[:-1]).astype(jnp.int32)
    out = _straight_through(zn, q)
    return out, indices, {"loss": self.commitment_weight * commit, "commitment": commit, **_stats(indices, k)}

  def decode_indices(self, indices):
    return self.get_variable("quantizer", "embed")[indices]


def reseed_dead_codes(quantizer_vars: dict, inputs, rng, max_unused: int) -> dict:
  """Replaces every VQ code unused for more than `max_unused` steps by a random (normalised) input vector.

  quantizer_vars: one VQ's 'quantizer' collection ({embed, embed_avg, cluster_size, unused_steps});
  inputs (N, D) encoder outputs of the current batch. Returns the updated collection (pure function).
  """
  dead = quantizer_vars["unused_steps"] > max_unused
  pick = jax.random.randint(rng, dead.shape, 0, inputs.shape[0])
  fresh = _l2norm(inputs[pick].astype(jnp.float32))
  return {
      "embed": jnp.where(dead[:, None], fresh, quantizer_vars["embed"]),
      "embed_avg": jnp.where(dead[:, None], fresh, quantizer_vars["embed_avg"]),
      "cluster_size": jnp.where(dead, 1.0, quantizer_vars["cluster_size"]),
      "unused_steps": jnp.where(dead, 0, quantizer_vars["unused_steps"]),
  }
