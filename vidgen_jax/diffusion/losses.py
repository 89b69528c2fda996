"""Diffusion training targets and per-sample losses."""
import jax.numpy as jnp

from vidgen_jax.diffusion import gaussian

LOSS_TYPES = ("l1", "l2")


def training_target(sched, x0, t, noise, prediction="eps"):
  """Regression target for the model output: the noise ('eps', the reference), v ('v') or x0 ('x0')."""
  if prediction == "eps":
    return noise
  if prediction == "v":
    return gaussian.v_target(sched, x0, t, noise)
  if prediction == "x0":
    return x0
  raise ValueError(f"unknown prediction {prediction!r}; expected one of {gaussian.PREDICTIONS}")


def diffusion_loss(pred, target, loss_type="l1", weights=None):
  """Per-sample loss of shape (B,): mean over all non-batch axes of w·|pred − target| ('l1') or w·(…)² ('l2').

  `weights` (optional) gets trailing singleton axes appended until it has pred's rank, then broadcasts, so
  (B,), (B, F) or full-shape weights all work. The mean is over all elements (not normalised by the weight
  sum), so a 0/1 mask zeroes its entries; renormalise in the caller if needed. Computed in float32. With
  weights=None, `.mean()` of the result equals the reference's loss (mean over all elements).
  """
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  if loss_type == "l1":
    err = jnp.abs(diff)
  elif loss_type == "l2":
    err = jnp.square(diff)
  else:
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
    err = err * weights.reshape(weights.shape + (1,) * (err.ndim - weights.ndim))
  return err.reshape(err.shape[0], -1).mean(axis=-1)
