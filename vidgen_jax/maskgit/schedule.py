"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1] (1 at r=0, 0 at r=1)."""
import math

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "linear", "square")


def gamma(r, schedule: str = "cosine"):
  """MaskGIT's cosine schedule cos(r·π/2) (default), 1 − r, or 1 − r²."""
  r = jnp.asarray(r, jnp.float32)
  if schedule == "cosine":
    return jnp.cos(r * math.pi / 2)
  if schedule == "linear":
    return 1.0 - r
  if schedule == "square":
    return 1.0 - r**2
  raise ValueError(f"mask schedule {schedule!r} unknown; choose one of {SCHEDULES}")


def num_masked(r, n, schedule: str = "cosine"):
  """Tokens masked at progress r out of n maskable ones: ceil(gamma(r)·n), at least 1 while r < 1."""
  n = jnp.asarray(n, jnp.int32)
  k = jnp.ceil(gamma(r, schedule) * n).astype(jnp.int32)
  return jnp.clip(k, jnp.where(jnp.asarray(r) < 1, jnp.minimum(1, n), 0), n)


def sample_train_mask(rng, batch: int, n: int, schedule: str = "cosine", valid=None):
  """(B, n) bool training mask: per sample r ~ U(0, 1), ceil(gamma(r)·n_valid) (>= 1) valid positions chosen
  uniformly at random are masked; positions with valid False (padding of shorter videos) never are."""
  valid = jnp.ones((batch, n), bool) if valid is None else valid.astype(bool)
  k_r, k_perm = jax.random.split(rng)
  r = jax.random.uniform(k_r, (batch,))
  k = num_masked(r, valid.sum(-1), schedule)                          # (B,)
  scores = jnp.where(valid, jax.random.uniform(k_perm, (batch, n)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)          # rank of each position's score
  return (rank < k[:, None]) & valid
