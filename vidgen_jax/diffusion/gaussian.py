"""Gaussian diffusion maths: forward process, eps/x0/v parameterisations, posterior and x0 thresholding.

Notation: ā = alphas_cumprod[t], a = sqrt(ā), b = sqrt(1 − ā); x_t = a·x0 + b·eps and v = a·eps − b·x0.
Every function takes a `Schedule`, per-sample int timesteps t of shape (B,) (or a scalar) and arrays whose
leading axis is the batch. Coefficients are float32, so low-precision inputs are promoted to float32.
"""
import jax.numpy as jnp

from vidgen_jax.diffusion.schedules import extract

PREDICTIONS = ("eps", "v", "x0")


def q_sample(sched, x0, t, noise):
  """Draws x_t ~ q(x_t | x0) with the given standard-normal noise: a·x0 + b·noise."""
  return (extract(sched.sqrt_alphas_cumprod, t, x0.shape) * x0
          + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def predict_x0_from_eps(sched, x_t, t, eps):
  """x0 = x_t/a − eps·sqrt(1/ā − 1) (the reference's `predict_start_from_noise`)."""
  return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
          - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)


def predict_eps_from_x0(sched, x_t, t, x0):
  """eps = (x_t/a − x0) / sqrt(1/ā − 1), the inverse of `predict_x0_from_eps`."""
  return ((extract(sched.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
          / extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


def v_target(sched, x0, t, noise):
  """Velocity target v = a·eps − b·x0 (Salimans & Ho)."""
  return (extract(sched.sqrt_alphas_cumprod, t, x0.shape) * noise
          - extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)


def predict_x0_from_v(sched, x_t, t, v):
  """x0 = a·x_t − b·v."""
  return (extract(sched.sqrt_alphas_cumprod, t, x_t.shape) * x_t
          - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v)


def predict_eps_from_v(sched, x_t, t, v):
  """eps = b·x_t + a·v."""
  return (extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * x_t
          + extract(sched.sqrt_alphas_cumprod, t, x_t.shape) * v)


def model_output_to_x0_eps(sched, x_t, t, out, prediction="eps"):
  """(x0, eps) implied by a raw model output under `prediction` in {'eps', 'v', 'x0'}."""
  if prediction == "eps":
    return predict_x0_from_eps(sched, x_t, t, out), out
  if prediction == "v":
    return predict_x0_from_v(sched, x_t, t, out), predict_eps_from_v(sched, x_t, t, out)
  if prediction == "x0":
    return out, predict_eps_from_x0(sched, x_t, t, out)
  raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def q_posterior(sched, x0, x_t, t):
  """q(x_{t−1} | x_t, x0) as (mean, variance, log_variance_clipped); the last two are shaped (B, 1, ...)."""
  mean = (extract(sched.posterior_mean_coef1, t, x_t.shape) * x0
          + extract(sched.posterior_mean_coef2, t, x_t.shape) * x_t)
  return (mean, extract(sched.posterior_variance, t, x_t.shape),
          extract(sched.posterior_log_variance_clipped, t, x_t.shape))


def dynamic_threshold(x0, percentile=0.9):
  """Imagen dynamic thresholding: s = per-sample quantile of |x0| (clamped ≥ 1); returns clip(x0, −s, s)/s.

  The quantile uses linear interpolation, like `torch.quantile` in the reference.
  """
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
  s = jnp.maximum(jnp.quantile(flat, percentile, axis=-1), 1.0)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s


def clip_x0(x0, dynamic_threshold_pct=None):
  """Static clipping of a predicted x0 to [−1, 1], or dynamic thresholding when a percentile is given."""
  if dynamic_threshold_pct is None:
    return jnp.clip(x0, -1.0, 1.0)
  return dynamic_threshold(x0, dynamic_threshold_pct)
