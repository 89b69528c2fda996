"""MaskGIT mask schedules and training masks.

gamma(r) is the fraction of the maskable tokens still masked at progress r in [0, 1]: gamma(0) = 1 (all
masked), gamma(1) = 0 (none), non-increasing in between. The same schedule drives training (a ratio drawn
per sample) and decoding (the number left masked after each step), as in MaskGIT (Chang et al. 2022).

  cosine  cos(r·π/2)   (MaskGIT's default: few tokens are revealed early, many late)
  linear  1 − r
  square  1 − r²

`schedule` arguments take one of those names or a callable r -> gamma(r) (jnp-traceable, same endpoints).
"""
import math

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "linear", "square")


def gamma(r, schedule="cosine"):
  """The masked fraction at progress r (any shape, float32)."""
  r = jnp.asarray(r, jnp.float32)
  if callable(schedule):
    return jnp.asarray(schedule(r), jnp.float32)
  if schedule == "cosine":
    return jnp.cos(r * (math.pi / 2))
  if schedule == "linear":
    return 1.0 - r
  if schedule == "square":
    return 1.0 - r * r
  raise ValueError(f"mask schedule {schedule!r} unknown; choose one of {SCHEDULES} or pass a callable")


def num_masked(r, n, schedule="cosine"):
  """int32 number of masked tokens out of n maskable ones at progress r: ceil(gamma(r)·n), clipped to
  [1, n] while r < 1 (something is always left to predict) and 0 at r >= 1. r and n broadcast."""
  r = jnp.asarray(r, jnp.float32)
  n = jnp.asarray(n, jnp.int32)
  # A hair below the exact product so that float rounding (e.g. cos(π/3)·10 = 5.000001) does not add a token.
  k = jnp.ceil(gamma(r, schedule) * n.astype(jnp.float32) - 1e-4).astype(jnp.int32)
  lo = jnp.where(r < 1.0, jnp.minimum(1, n), 0)
  hi = jnp.where(r < 1.0, n, 0)
  return jnp.clip(k, lo, hi)


def rank_along_last(scores):
  """int32 rank of every entry in its row (0 = smallest; ties by position), same shape as scores."""
  order = jnp.argsort(scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def sample_train_mask(rng, batch: int, n: int, schedule="cosine", valid=None):
  """(batch, n) bool training mask (True = masked, to be predicted).

  Per sample a ratio r ~ U(0, 1) is drawn and ceil(gamma(r)·n_valid) (at least 1 when the sample has a
  valid position) positions are chosen uniformly at random among its valid ones. valid (batch, n) bool marks
  real tokens of variable-length videos; padding (valid False) is never masked. phenaki-pytorch draws r from
  the discrete grid {0, 1/steps, ...} instead; the continuous draw is MaskGIT's.
  """
  valid = jnp.ones((batch, n), bool) if valid is None else jnp.broadcast_to(jnp.asarray(valid, bool), (batch, n))
  k_r, k_perm = jax.random.split(rng)
  r = jax.random.uniform(k_r, (batch,))
  k = num_masked(r, valid.sum(-1), schedule)                               # (B,)
  scores = jnp.where(valid, jax.random.uniform(k_perm, (batch, n)), 2.0)   # padding sorts last
  return (rank_along_last(scores) < k[:, None]) & valid
