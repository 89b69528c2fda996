"""Jit-friendly DDPM, DDIM and DPM-Solver++(2M) samplers over a model function `model_fn(x_t, t) -> raw output`.

`t` passed to the model is an int32 (B,) array of schedule indices in [0, T−1]. The step loop is a
`lax.fori_loop`/`lax.scan`, so the model is traced once whatever the number of steps. `shape` and
`num_steps` must be static; the schedule (except for spacing='logsnr'), rng, eta and x_T may be traced.
Samples are returned in the model's space (here [−1, 1]); mapping to [0, 1] or uint8 is the caller's job.
Typical use:

  sample = jax.jit(lambda sched, rng: ddim_sample(model_fn, sched, shape, rng, num_steps=50))
"""
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.diffusion import gaussian
from vidgen_jax.diffusion.schedules import extract


SPACINGS = ("uniform", "logsnr")


def sampling_timesteps(num_timesteps, num_steps, spacing="uniform", sched=None):
  """Descending, distinct int32 schedule indices for a `num_steps`-step sampler, from T−1 down to 0.

  spacing='uniform' (the default): round(linspace(T−1, 0, num_steps)) (NumPy round-half-even), i.e. evenly
  spaced over [0, T−1] including both ends (num_steps=1 gives [T−1]; num_steps=T gives every index).
  spacing='logsnr': evenly spaced in λ = log(α/σ) between λ(T−1) and λ(0), each snapped to the index of
  nearest λ and then pushed apart where snapping merged neighbours; it reads the values of `sched`, which
  must therefore be concrete (closed over, not a traced jit argument). The step taken at the last index (0)
  jumps straight to x0.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
  if spacing == "uniform":
    return np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)
  if spacing != "logsnr":
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
  if sched is None:
    raise ValueError("spacing='logsnr' needs the schedule")
  try:
    lam = 0.5 * (np.log(np.asarray(sched.alphas_cumprod, np.float64))
                 - np.asarray(sched.log_one_minus_alphas_cumprod, np.float64))
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError("spacing='logsnr' reads the schedule's values: close over the schedule instead of "
                     "passing it to jit as a traced argument") from e
  targets = np.linspace(lam[-1], lam[0], num_steps)
  idx = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)  # λ decreases with t: idx descends
  k = np.arange(num_steps)
  idx = np.clip(idx, num_steps - 1 - k, num_timesteps - 1 - k)  # room for distinct neighbours on both sides
  for i in range(1, num_steps):
    idx[i] = min(idx[i], idx[i - 1] - 1)
  return idx.astype(np.int32)


def log_snr(sched, t):
  """λ_t = log(α_t/σ_t) = ½·log ā − ½·log(1 − ā) (float32, decreasing in t) at indices t."""
  return 0.5 * jnp.log(jnp.take(sched.alphas_cumprod, t)) - 0.5 * jnp.take(sched.log_one_minus_alphas_cumprod, t)


def _denoised_x0_eps(model_fn, sched, x, t, prediction, clip_denoised, dynamic_threshold_pct):
  """Runs the model and returns (x0, eps); with clipping, eps is recomputed from the clipped x0."""
  out = model_fn(x, t).astype(jnp.float32)
  x0, eps = gaussian.model_output_to_x0_eps(sched, x, t, out, prediction)
  if clip_denoised:
    x0 = gaussian.clip_x0(x0, dynamic_threshold_pct)
    eps = gaussian.predict_eps_from_x0(sched, x, t, x0)
  return x0, eps


def _check_threshold_args(clip_denoised, dynamic_threshold_pct):
  if dynamic_threshold_pct is not None and not clip_denoised:
    raise ValueError("dynamic_threshold_pct replaces the static clip and needs clip_denoised=True")


def _initial_noise(rng, shape, x_T):
  init_rng, loop_rng = jax.random.split(rng)
  if x_T is None:
    x_T = jax.random.normal(init_rng, shape, jnp.float32)
  return jnp.asarray(x_T, jnp.float32), loop_rng


def ddpm_sample(model_fn, sched, shape, rng, *, prediction="eps", clip_denoised=True,
                dynamic_threshold_pct=None, x_T=None):
  """Ancestral DDPM over all T steps (the reference's `p_sample_loop`), returning x0 of `shape`.

  Each step predicts x0 (clipped to [−1, 1] or dynamically thresholded when clip_denoised), takes the
  posterior mean of q(x_{t−1} | x_t, x0) and adds noise with the fixed small variance
  exp(posterior_log_variance_clipped); no noise is added at t=0. x_T defaults to N(0, I) drawn from rng.
  """
  _check_threshold_args(clip_denoised, dynamic_threshold_pct)
  x, loop_rng = _initial_noise(rng, shape, x_T)
  num_timesteps = sched.num_timesteps

  def step(i, x):
    t_scalar = num_timesteps - 1 - i
    t = jnp.full((shape[0],), t_scalar, jnp.int32)
    x0, _ = _denoised_x0_eps(model_fn, sched, x, t, prediction, clip_denoised, dynamic_threshold_pct)
    mean, _, log_var = gaussian.q_posterior(sched, x0, x, t)
    noise = jax.random.normal(jax.random.fold_in(loop_rng, t_scalar), shape, jnp.float32)
    nonzero = (t_scalar > 0).astype(jnp.float32)
    return mean + nonzero * jnp.exp(0.5 * log_var) * noise

  return jax.lax.fori_loop(0, num_timesteps, step, x)


def _alpha_cumprod_prev(sched, t_prev, x_shape):
  """ā at the next (smaller) index, with ā = 1 for t_prev = −1 (the final jump to x0)."""
  ab = jnp.where(t_prev >= 0, jnp.take(sched.alphas_cumprod, jnp.maximum(t_prev, 0)), 1.0)
  return ab.reshape(ab.shape + (1,) * (len(x_shape) - ab.ndim))


def pyramid_timesteps(num_timesteps, num_steps, frames, frame_offset):
  """Per-frame DDIM schedule of pyramid sampling: (t_now, t_next), each (num_iterations, frames) int32.

  Frame f runs the `sampling_timesteps(T, num_steps)` sequence delayed by `frame_offset * f` iterations, so
  earlier frames are always at least as clean as later ones; −1 marks a finished (clean) frame. There are
  num_steps + frame_offset * (frames − 1) iterations; in each, a frame moves one step or (waiting at T−1,
  or finished) stays where it is. frame_offset=0 is plain DDIM with every frame in step.
  """
  if frame_offset < 0:
    raise ValueError(f"frame_offset must be >= 0, got {frame_offset}")
  times = np.append(sampling_timesteps(num_timesteps, num_steps), -1).astype(np.int32)
  iters = num_steps + frame_offset * (frames - 1)
  index = np.clip(np.arange(iters + 1)[:, None] - frame_offset * np.arange(frames)[None, :], 0, num_steps)
  return times[index[:-1]], times[index[1:]]


def ddim_sample(model_fn, sched, shape, rng, *, num_steps=50, eta=0.0, prediction="eps", clip_denoised=True,
                dynamic_threshold_pct=None, x_T=None, frame_offset=0):
  """DDIM (Song et al.) over `sampling_timesteps(T, num_steps)`, returning x0 of `shape`.

  From index t to the next index t' (ā' = 1 after the last one, so the last step returns the predicted x0):
  x_{t'} = sqrt(ā')·x0 + sqrt(1 − ā' − σ²)·eps + σ·z with σ = eta·sqrt((1 − ā')/(1 − ā))·sqrt(1 − ā/ā').
  eta=0 is deterministic; eta=1 with num_steps=T matches DDPM's posterior variance. With clipping, eps is
  recomputed from the clipped x0 before the update. `num_steps` must be a Python int; eta may be traced.

  frame_offset > 0 (static) samples as a pyramid (Diffusion Forcing, Chen et al. 2024): frame f starts
  frame_offset·f steps after frame 0 (`pyramid_timesteps`), and the model is called with per-frame
  timesteps t of shape (B, T) (finished frames at index 0), so each frame is denoised with the earlier,
  cleaner frames in view. It needs a model trained with per-frame noise levels (diffusion.frame_noise_prob)
  and costs num_steps + frame_offset·(T − 1) model calls.
  """
  _check_threshold_args(clip_denoised, dynamic_threshold_pct)
  x, loop_rng = _initial_noise(rng, shape, x_T)
  if frame_offset:
    return _pyramid_ddim(model_fn, sched, x, loop_rng, num_steps, eta, prediction, clip_denoised,
                         dynamic_threshold_pct, frame_offset)
  times = sampling_timesteps(sched.num_timesteps, num_steps)
  times_prev = np.concatenate([times[1:], np.array([-1], np.int32)])
  deterministic = isinstance(eta, (int, float)) and eta == 0

  def step(x, ts):
    t_scalar, t_prev_scalar = ts
    t = jnp.full((shape[0],), t_scalar, jnp.int32)
    t_prev = jnp.full((shape[0],), t_prev_scalar, jnp.int32)
    x0, eps = _denoised_x0_eps(model_fn, sched, x, t, prediction, clip_denoised, dynamic_threshold_pct)
    ab = extract(sched.alphas_cumprod, t, shape)
    ab_prev = _alpha_cumprod_prev(sched, t_prev, shape)
    x_prev = jnp.sqrt(ab_prev) * x0
    if deterministic:
      return x_prev + jnp.sqrt(1.0 - ab_prev) * eps, None
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    noise = jax.random.normal(jax.random.fold_in(loop_rng, t_scalar), shape, jnp.float32)
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
    return x_prev + dir_coef * eps + sigma * noise, None

  x, _ = jax.lax.scan(step, x, (jnp.asarray(times), jnp.asarray(times_prev)))
  return x


def _pyramid_ddim(model_fn, sched, x, loop_rng, num_steps, eta, prediction, clip_denoised,
                  dynamic_threshold_pct, frame_offset):
  """`ddim_sample`'s loop with one timestep per frame (see `pyramid_timesteps`)."""
  shape = x.shape
  t_now, t_next = pyramid_timesteps(sched.num_timesteps, num_steps, shape[1], frame_offset)

  def step(x, xs):
    now, nxt, i = xs
    t = jnp.broadcast_to(jnp.maximum(now, 0), shape[:2])
    x0, eps = _denoised_x0_eps(model_fn, sched, x, t, prediction, clip_denoised, dynamic_threshold_pct)
    ab = _alpha_cumprod_prev(sched, jnp.broadcast_to(now, shape[:2]), shape)
    ab_next = _alpha_cumprod_prev(sched, jnp.broadcast_to(nxt, shape[:2]), shape)
    sigma = eta * jnp.sqrt((1.0 - ab_next) / jnp.maximum(1.0 - ab, 1e-12) * (1.0 - ab / ab_next))
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape, jnp.float32)
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - ab_next - sigma**2, 0.0))
    x_next = jnp.sqrt(ab_next) * x0 + dir_coef * eps + sigma * noise
    moving = (now != nxt).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    return jnp.where(moving, x_next, x), None

  xs = (jnp.asarray(t_now), jnp.asarray(t_next), jnp.arange(t_now.shape[0]))
  x, _ = jax.lax.scan(step, x, xs)
  return x


def dpmpp_2m_sample(model_fn, sched, shape, rng, *, num_steps=20, prediction="eps", clip_denoised=True,
                    dynamic_threshold_pct=None, x_T=None, timesteps="uniform", lower_order_final=True):
  """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2: multistep, second order, data prediction), returning x0.

  The model is evaluated once at each of t_0 > … > t_{N−1} = 0, `sampling_timesteps(T, num_steps,
  timesteps, sched)` (so num_steps model calls, as in DDIM). With α = sqrt(ā), σ = sqrt(1 − ā),
  λ = log(α/σ) and h_i = λ(t_{i+1}) − λ(t_i), step i is
    x_{t_{i+1}} = (σ_{i+1}/σ_i)·x_{t_i} − α_{i+1}·expm1(−h_i)·D_i,   D_i = (1 + w_i)·x0_i − w_i·x0_{i−1},
  with w_i = h_i/(2·h_{i−1}) (1/(2r) in the paper); x0_i is the model's (clipped) x0 at t_i and the previous
  x0 is carried in the scan state. w = 0 gives the first-order step, which is exactly DDIM (eta=0); it is
  used on the first step (no history) and, with lower_order_final (the paper's "lower order final"), on the
  step onto index 0. With the default uniform spacing on the cosine schedule that step spans a far larger λ
  interval than the one before it (4.9x at 10 steps, 3.3x at 50), and extrapolating over it is worse than a
  first-order step (exact Gaussian-data denoiser, 20 steps: RMS error 1.6e-3 with it, 5e-2 without); on
  grids uniform in λ ('logsnr') it makes little difference. After the model call at index 0 the sampler
  returns that call's x0 (σ = 0, like DDIM's last step). With N ≤ 2 (N ≤ 3 with lower_order_final) every
  step is first order and the result equals DDIM's. `num_steps`, `timesteps` and `lower_order_final` are
  static; the schedule may be traced for 'uniform' spacing.
  """
  _check_threshold_args(clip_denoised, dynamic_threshold_pct)
  x, _ = _initial_noise(rng, shape, x_T)
  times = sampling_timesteps(sched.num_timesteps, num_steps, timesteps, sched)
  times_next = np.append(times[1:], -1).astype(np.int32)        # −1: the final jump to x0
  times_last = np.insert(times[:-1], 0, -1).astype(np.int32)    # −1: no history yet
  second_order = np.arange(num_steps) > 0                         # a predecessor exists ...
  second_order[-1] = False                                        # ... and the step is not the jump to x0
  if lower_order_final and num_steps > 1:
    second_order[-2] = False

  def step(carry, xs):
    x, x0_last = carry
    t_scalar, t_next, t_last, use_last = xs
    t = jnp.full((shape[0],), t_scalar, jnp.int32)
    x0, _ = _denoised_x0_eps(model_fn, sched, x, t, prediction, clip_denoised, dynamic_threshold_pct)
    lam, lam_next, lam_last = log_snr(sched, jnp.maximum(jnp.stack([t_scalar, t_next, t_last]), 0))
    h = lam_next - lam
    final = t_next < 0
    ratio = jnp.where(final, 0.0, jnp.take(sched.sqrt_one_minus_alphas_cumprod, jnp.maximum(t_next, 0))
                      / jnp.take(sched.sqrt_one_minus_alphas_cumprod, t_scalar))
    coef = jnp.where(final, 1.0, -jnp.take(sched.sqrt_alphas_cumprod, jnp.maximum(t_next, 0)) * jnp.expm1(-h))
    w = jnp.where(use_last, h / (2.0 * (lam - lam_last)), 0.0)
    d = x0 + w * (x0 - x0_last)
    return (ratio * x + coef * d, x0), None

  xs = tuple(jnp.asarray(a) for a in (times, times_next, times_last, second_order))
  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), xs)
  return x
