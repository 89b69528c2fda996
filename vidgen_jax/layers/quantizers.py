"""Quantizers of video tokenizers (C-ViViT): FSQ, LFQ and an EMA cosine-similarity VQ, plus code statistics.

Every quantizer maps z (..., dim) to (quantized (..., dim), indices (...) int32, aux dict). The gradient is
straight-through: q_st = x + stop_gradient(q - x), the identity w.r.t. the quantizer's own input x (the
projected input for FSQ/LFQ, the l2-normalised input for VQ), so the encoder trains through the rounding.
aux['loss'] is the term to add to the training loss (already weighted; zero when it has none), next to
unweighted loss terms and the batch's 'usage' and 'perplexity'. `train=True` turns on the training-only
terms and updates; every quantizer also has `decode_indices(indices) -> quantized`.

* `FSQ(levels, dim)` (Mentzer et al. 2023): Dense(dim -> len(levels)), each channel bounded with tanh to its
  level count L and rounded to the integers -(L//2) .. (L-1)//2, divided by L//2, Dense back to dim. The
  codebook is the implicit grid of prod(levels) codes (index: first level varies fastest, as in
  vector-quantize-pytorch). No auxiliary loss. The projections exist only when dim != len(levels).
* `LFQ(codebook_size, dim)` (MAGVIT-v2; phenaki-pytorch's default): Dense(dim -> log2 K), each channel to
  +-1 by its sign, index = the bit pattern (first channel = most significant bit), Dense back. Loss (train
  only) = entropy_weight * (mean per-token entropy - diversity_gamma * entropy of the batch-mean code
  distribution) + commitment_weight * mean((x - sign(x))^2), the code distribution being
  softmax(2 x . c / temperature) over all K codes c. That distribution is a product of one Bernoulli per bit,
  so both entropies are computed exactly without the (tokens, K) table (`lfq_entropies`: a sum of binary
  entropies, and the mean distribution as a (sqrt K, tokens) x (tokens, sqrt K) product); `reference_entropy=
  True` instead materialises it as vector-quantize-pytorch does, with torch's clamp(p, 1e-5) inside both logs
  (`lfq_entropies_dense`). Defaults are those of vector-quantize-pytorch's LFQ that phenaki-pytorch 0.5.0 was
  written against: weights 0.1 and 0.25, gamma 1, temperature 1/100. The projections exist only when
  dim != log2 K.
* `VQ(codebook_size, dim)` (phenaki's `VectorQuantize(use_cosine_sim=True)`): inputs and codes on the unit
  sphere, nearest code by cosine similarity, codebook updated by an exponential moving average of the
  assigned (normalised) inputs (decay 0.8), not by gradients. Loss = commitment_weight * mean((x_n - q)^2).

VQ state: the mutable collection 'quantizer_stats' (name `VQ_COLLECTION`) holds 'embed' (K, dim) the codebook,
'embed_avg' (K, dim) and 'cluster_size' (K,) the EMA statistics, and 'unused_steps' (K,) int32, the number of
updates since each code was last assigned. It is created by `init` (from the 'params' rng) and is not a
parameter: a train step applies with `train=True, mutable=['quantizer_stats']`, keeps the returned collection
in its state, and may call `reseed_dead_codes` on it (a pure function) every few steps.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidgen_jax.layers import attention
from vidgen_jax.layers.transformer import l2norm

VQ_COLLECTION = "quantizer_stats"


def codebook_usage(indices, codebook_size: int):
  """Fraction of the codebook_size codes that occur at least once in `indices`."""
  counts = jnp.zeros((codebook_size,), jnp.int32).at[jnp.ravel(indices)].add(1)
  return jnp.mean((counts > 0).astype(jnp.float32))


def perplexity(indices, codebook_size: int):
  """exp(entropy) of the empirical code distribution of `indices`: K if all K codes are equally used, 1 on collapse."""
  counts = jnp.zeros((codebook_size,), jnp.float32).at[jnp.ravel(indices)].add(1.0)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def straight_through(x, q):
  """q in the forward pass, the identity w.r.t. x in the backward pass."""
  return x + jax.lax.stop_gradient(q - x)


def sign_patterns(bits: int):
  """(2**bits, bits) float32 +-1: row k is the binary pattern of k, first column the most significant bit."""
  weights = 2 ** jnp.arange(bits - 1, -1, -1, dtype=jnp.int32)
  return jnp.where((jnp.arange(2 ** bits, dtype=jnp.int32)[:, None] & weights) > 0, 1.0, -1.0)


def _bit_log_norm(a):
  """sum_b log(2 cosh(a_b / 2)), stably: the log normaliser of exp(c_b a_b / 2) over c_b = +-1."""
  return jnp.sum(0.5 * jnp.abs(a) + jnp.log1p(jnp.exp(-jnp.abs(a))), axis=-1, keepdims=True)


def _pattern_probs(a):
  """(N, b) bit logits -> (N, 2**b): the probability of every sign pattern of these b independent bits."""
  dot = jnp.einsum("nb,kb->nk", a, sign_patterns(a.shape[-1]), precision=jax.lax.Precision.HIGHEST)
  return jnp.exp(0.5 * dot - _bit_log_norm(a))


def _entropy(p, floor):
  return -jnp.sum(p * jnp.log(jnp.maximum(p, floor)), axis=-1)


def lfq_entropies(h, temperature: float):
  """Exact (mean per-token entropy, entropy of the token-mean distribution) of p(c | h) = softmax_c(2 h . c / T)
  over the codes c in {-1, +1}^B, for h (N, B).

  2 h . c / T = sum_b c_b a_b / 2 with a_b = 4 h_b / T, so p(c | h) = prod_b sigmoid(c_b a_b): independent
  bits. The per-token entropy is the sum of B binary entropies, log(1 + e^-|a|) + |a| sigmoid(-|a|). With the
  bits split into a high half (B1) and a low half (B2), the mean distribution is
  mean_n P1[n, c1] P2[n, c2] = (P1^T P2 / N)[c1, c2], flattened row-major into the code index. Memory and
  time O(N (2^B1 + 2^B2)) instead of O(N 2^B).
  """
  a = 4.0 * h.reshape(-1, h.shape[-1]).astype(jnp.float32) / temperature
  half = a.shape[-1] // 2
  per_token = jnp.sum(jnp.log1p(jnp.exp(-jnp.abs(a))) + jnp.abs(a) * jax.nn.sigmoid(-jnp.abs(a)), axis=-1)
  mean = jnp.einsum("nh,nl->hl", _pattern_probs(a[:, :half]), _pattern_probs(a[:, half:]),
                    precision=jax.lax.Precision.HIGHEST).reshape(-1) / a.shape[0]
  return jnp.mean(per_token), _entropy(mean, jnp.finfo(jnp.float32).tiny)


def lfq_entropies_dense(h, temperature: float, floor: float = 1e-5):
  """`lfq_entropies` as vector-quantize-pytorch computes them: the (N, 2^B) softmax materialised, log(max(p,
  floor)) in both entropies (its clamp(min=1e-5)). floor=0 gives the exact values, at O(N 2^B) cost."""
  h = h.reshape(-1, h.shape[-1]).astype(jnp.float32)
  logits = 2.0 * jnp.einsum("nb,kb->nk", h, sign_patterns(h.shape[-1]), precision=jax.lax.Precision.HIGHEST)
  probs = jax.nn.softmax(logits / temperature, axis=-1)
  floor = max(floor, float(jnp.finfo(jnp.float32).tiny))
  return jnp.mean(_entropy(probs, floor)), _entropy(jnp.mean(probs, axis=0), floor)


def _stats(indices, codebook_size):
  return {"usage": codebook_usage(indices, codebook_size), "perplexity": perplexity(indices, codebook_size)}


def _projection(features, axes, name):
  return attention.dense(features, axes, name=name, use_bias=True, flat=True)


class FSQ(nn.Module):
  """Finite scalar quantization with `levels` per channel (e.g. (8, 5, 5, 5): 1000 codes)."""
  levels: Sequence[int]
  dim: int

  def __post_init__(self):
    if not self.levels or min(self.levels) < 2:
      raise ValueError(f"FSQ levels must all be >= 2, got {self.levels}")
    super().__post_init__()

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  @property
  def has_projections(self) -> bool:
    return self.dim != len(self.levels)

  def bound(self, h):
    """tanh-bound each channel so that rounding gives the integers -(L//2) .. (L-1)//2 of its level count L."""
    levels = jnp.asarray(self.levels, jnp.float32)
    half = (levels - 1) * (1 - 1e-3) / 2
    offset = jnp.where(levels % 2 == 0, 0.5, 0.0)       # even L: the grid is shifted by a half
    return jnp.tanh(h + jnp.arctanh(offset / half)) * half - offset

  def _levels_and_basis(self):
    levels = jnp.asarray(self.levels, jnp.int32)
    return levels, jnp.cumprod(jnp.concatenate([jnp.ones((1,), jnp.int32), levels[:-1]]))

  def _half_width(self):
    return jnp.asarray([l // 2 for l in self.levels], jnp.float32)

  def codes_to_indices(self, codes):
    """Normalised grid codes (..., len(levels)) (integers / (L//2)) -> int32 indices in [0, prod(levels))."""
    levels, basis = self._levels_and_basis()
    digits = jnp.round(codes * self._half_width()).astype(jnp.int32) + levels // 2
    return jnp.sum(digits * basis, axis=-1)

  def indices_to_codes(self, indices):
    """int indices (...) -> normalised grid codes (..., len(levels)), float32."""
    levels, basis = self._levels_and_basis()
    digits = (indices[..., None] // basis) % levels
    return (digits - levels // 2).astype(jnp.float32) / self._half_width()

  def quantize(self, h):
    """Projected input (..., len(levels)) -> normalised grid codes, straight-through."""
    bounded = self.bound(h.astype(jnp.float32))
    return straight_through(bounded, jnp.round(bounded)) / self._half_width()

  def setup(self):
    if self.has_projections:
      self.project_in = _projection(len(self.levels), ("embed", None), "project_in")
      self.project_out = _projection(self.dim, (None, "embed"), "project_out")

  def __call__(self, z, train: bool = False):
    codes = self.quantize(self.project_in(z) if self.has_projections else z)
    indices = self.codes_to_indices(jax.lax.stop_gradient(codes))
    out = self.project_out(codes) if self.has_projections else codes
    return out, indices, {"loss": jnp.zeros((), jnp.float32), **_stats(indices, self.codebook_size)}

  def decode_indices(self, indices):
    codes = self.indices_to_codes(indices)
    return self.project_out(codes) if self.has_projections else codes


class LFQ(nn.Module):
  """Lookup-free quantization to log2(codebook_size) sign bits."""
  codebook_size: int
  dim: int
  entropy_weight: float = 0.1
  commitment_weight: float = 0.25
  diversity_gamma: float = 1.0
  temperature: float = 0.01
  reference_entropy: bool = False        # True: the (tokens, K) softmax with torch's clamp (lfq_entropies_dense)

  def __post_init__(self):
    if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
      raise ValueError(f"LFQ needs a power-of-2 codebook_size, got {self.codebook_size}")
    super().__post_init__()

  @property
  def bits(self) -> int:
    return int(math.log2(self.codebook_size))

  @property
  def has_projections(self) -> bool:
    return self.dim != self.bits

  def _weights(self):
    return 2 ** jnp.arange(self.bits - 1, -1, -1, dtype=jnp.int32)

  def bits_to_indices(self, bits):
    """+-1 bits (..., B), most significant first -> int32 indices."""
    return jnp.sum((bits > 0).astype(jnp.int32) * self._weights(), axis=-1)

  def indices_to_bits(self, indices):
    """int indices (...) -> +-1 float32 bits (..., B)."""
    return jnp.where((indices[..., None] & self._weights()) > 0, 1.0, -1.0)

  def entropy_terms(self, h):
    """(mean per-token entropy, entropy of the mean code distribution) of softmax(2 h . c / temperature)."""
    if self.reference_entropy:
      return lfq_entropies_dense(h, self.temperature)
    return lfq_entropies(h, self.temperature)

  def setup(self):
    if self.has_projections:
      self.project_in = _projection(self.bits, ("embed", None), "project_in")
      self.project_out = _projection(self.dim, (None, "embed"), "project_out")

  def __call__(self, z, train: bool = False):
    h = (self.project_in(z) if self.has_projections else z).astype(jnp.float32)
    q = jnp.where(h > 0, 1.0, -1.0)
    indices = self.bits_to_indices(q)
    codes = straight_through(h, q)
    out = self.project_out(codes) if self.has_projections else codes
    aux = _stats(indices, self.codebook_size)
    if train:
      per_token, batch = self.entropy_terms(h)
      commit = jnp.mean(jnp.square(h - q))
      entropy_aux = per_token - self.diversity_gamma * batch
      loss = self.entropy_weight * entropy_aux + self.commitment_weight * commit
      aux.update(per_token_entropy=per_token, batch_entropy=batch, entropy_aux=entropy_aux, commitment=commit)
    else:
      loss = jnp.zeros((), jnp.float32)
    return out, indices, {"loss": loss, **aux}

  def decode_indices(self, indices):
    codes = self.indices_to_bits(indices)
    return self.project_out(codes) if self.has_projections else codes


class VQ(nn.Module):
  """EMA vector quantizer with cosine similarity; state in the 'quantizer_stats' collection (module docstring).

  With `train=True` the call must be applied with mutable=['quantizer_stats']: the EMA update
    cluster_size <- decay * cluster_size + (1 - decay) * counts
    embed_avg    <- decay * embed_avg + (1 - decay) * sum of the normalised inputs assigned to each code
    embed        <- l2norm(embed_avg) for the assigned codes (= l2norm(embed_avg / smoothed cluster_size), as
                    in the reference: the scale drops out; unassigned codes keep their exact value)
  runs after the assignment, so the returned codes are those of the codebook before the update.
  """
  codebook_size: int
  dim: int
  decay: float = 0.8
  commitment_weight: float = 1.0

  def setup(self):
    k = self.codebook_size
    init = lambda: l2norm(jax.random.normal(self.make_rng("params"), (k, self.dim), jnp.float32))
    self.embed = self.variable(VQ_COLLECTION, "embed", init)
    self.embed_avg = self.variable(VQ_COLLECTION, "embed_avg", lambda: self.embed.value)
    self.cluster_size = self.variable(VQ_COLLECTION, "cluster_size", lambda: jnp.ones((k,), jnp.float32))
    self.unused_steps = self.variable(VQ_COLLECTION, "unused_steps", lambda: jnp.zeros((k,), jnp.int32))

  def __call__(self, z, train: bool = False):
    k = self.codebook_size
    embed = self.embed.value
    zn = l2norm(z.astype(jnp.float32))
    flat = zn.reshape(-1, self.dim)
    indices = jnp.argmax(flat @ embed.T, axis=-1)
    q = embed[indices].reshape(zn.shape)
    if train and not self.is_initializing():
      if not self.is_mutable_collection(VQ_COLLECTION):
        raise ValueError(f"VQ with train=True updates its codebook: apply with mutable=['{VQ_COLLECTION}']")
      onehot = jax.nn.one_hot(indices, k, dtype=jnp.float32)
      counts = onehot.sum(0)
      ema = lambda old, new: self.decay * old + (1 - self.decay) * new
      self.cluster_size.value = ema(self.cluster_size.value, counts)
      self.embed_avg.value = ema(self.embed_avg.value, onehot.T @ jax.lax.stop_gradient(flat))
      self.embed.value = jnp.where(counts[:, None] > 0, l2norm(self.embed_avg.value), embed)
      self.unused_steps.value = jnp.where(counts > 0, 0, self.unused_steps.value + 1)
    commit = jnp.mean(jnp.square(zn - q))
    indices = indices.reshape(z.shape[:-1]).astype(jnp.int32)
    return straight_through(zn, q), indices, {"loss": self.commitment_weight * commit, "commitment": commit,
                                              **_stats(indices, k)}

  def decode_indices(self, indices):
    return self.embed.value[indices]


def reseed_dead_codes(stats: dict, inputs, rng, max_unused: int) -> dict:
  """Replaces every VQ code unused for more than `max_unused` updates by a random encoder output of the batch.

  stats: one VQ's 'quantizer_stats' collection {embed, embed_avg, cluster_size, unused_steps}; inputs
  (..., dim) the encoder outputs of the current batch (normalised here). Dead codes get distinct inputs
  while there are at least as many inputs as dead codes. Live codes are untouched. Returns the new
  collection (pure; jit-able).
  """
  flat = l2norm(inputs.reshape(-1, inputs.shape[-1]).astype(jnp.float32))
  dead = stats["unused_steps"] > max_unused
  rank = jnp.cumsum(dead) - 1                                       # i-th dead code takes the i-th draw
  pick = jax.random.permutation(rng, flat.shape[0])[rank % flat.shape[0]]
  fresh = flat[pick]
  return {
      "embed": jnp.where(dead[:, None], fresh, stats["embed"]),
      "embed_avg": jnp.where(dead[:, None], fresh, stats["embed_avg"]),
      "cluster_size": jnp.where(dead, 1.0, stats["cluster_size"]),
      "unused_steps": jnp.where(dead, 0, stats["unused_steps"]),
  }
