"""Sampling an unconditional-in-x model conditioned on known data (Ho et al. 2022, sec. 3.2), as pure functions.

A model trained on x alone can still sample x = [x^a, x^b] given x^a, or given any observation y = A(x) by a
known differentiable operator A (a frame selection for video prediction and extension, a spatial average
pool for super-resolution). Two methods wrap the denoiser `x0_fn(z_t, t) -> x̂0` into a conditioned one that
any sampler of `samplers` runs with prediction='x0':

* 'replacement' (the baseline): before every model call the known frames of z_t are replaced by a fresh
  sample of q(z_t^a | x^a), and the known frames of x̂0 are pasted from x^a. The unknown frames only see x^a
  through the noisy z_t^a, which is why they drift from it (the paper's motivation).
* 'reconstruction' (reconstruction guidance): additionally, the prediction is corrected by the gradient of
  the reconstruction error of the observation:
      x̃0 = x̂0 − (w_r · α_t / 2) · ∇_{z_t} ‖y − A(x̂0(z_t))‖²,   α_t = sqrt(ᾱ_t),
  applied to the unknown part only (the known frames are pasted anyway). For observations that are not a
  frame selection (super-resolution) there is nothing to replace; the gradient term acts, and the
  prediction is projected onto the consistent set (x̂ + A⁺(y − A x̂)), the analogue of pasting.

The gradient costs one backward pass through the (guided) model per step. The error is a sum over the
observed elements of each sample, so w_r does not depend on the batch size.

A third method needs a model trained with per-frame noise levels (diffusion.frame_noise_prob > 0, or
diffusion.clean_prefix_prob > 0, which trains on exactly this input):
* 'clean' (Diffusion Forcing, Chen et al. 2024): the known frames enter the model as they are, noise-free,
  with timestep 0, while the unknown frames carry the sampler's timestep; the model continues the video
  from frames it sees exactly, with no extra backward pass. Known frames of x̂0 are pasted.
"""
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from vidgen_jax.diffusion import gaussian
from vidgen_jax.diffusion.schedules import extract

METHODS = ("replacement", "reconstruction", "clean")


@dataclass(frozen=True)
class Observation:
  """What is known about the sample: y = observe(x).

  y: the observed values. observe: x (B, T, H, W, C) -> array shaped like y (differentiable, linear).
  known_frames: (B, T) bool when the observation is "these frames of x are y" (y then is a full-size video
  whose unknown frames are ignored), enabling replacement; None otherwise.
  project: x0 -> the nearest x0 consistent with y, x0 + A⁺(y − A x0) (pasting the known frames; adding
  the upsampled low-resolution residual), applied to every prediction; None: no projection.
  """
  y: jax.Array
  observe: Callable
  known_frames: jax.Array | None = None
  project: Callable | None = None


def frames_observation(video, known_frames) -> Observation:
  """Known frames: `video` (B, T, H, W, C) in model space, `known_frames` (B, T) or (T,) bool."""
  known = jnp.broadcast_to(jnp.asarray(known_frames, bool), video.shape[:2])
  weight = known.astype(video.dtype)[:, :, None, None, None]
  return Observation(y=video * weight, observe=lambda x: x * weight, known_frames=known,
                     project=lambda x0: jnp.where(known[:, :, None, None, None], video, x0))


def downsample(x, factor: int):
  """Average pooling of (B, T, H, W, C) over factor x factor pixel blocks."""
  b, t, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f"frame {h}x{w} is not divisible by the downsampling factor {factor}")
  return x.reshape(b, t, h // factor, factor, w // factor, factor, c).mean(axis=(3, 5))


def upsample_nearest(x, factor: int):
  return jnp.repeat(jnp.repeat(x, factor, axis=2), factor, axis=3)


def lowres_observation(lowres, factor: int) -> Observation:
  """Super-resolution: `lowres` (B, T, H/factor, W/factor, C) is the average-pooled full-resolution video.

  The projection adds the nearest-upsampled residual, so that downsample(project(x0)) == lowres exactly
  while x0's detail inside every block is kept."""
  return Observation(y=lowres, observe=lambda x: downsample(x, factor),
                     project=lambda x0: x0 + upsample_nearest(lowres - downsample(x0, factor), factor))


def _frames(mask):
  return mask[:, :, None, None, None]


def conditioned_x0_fn(x0_fn, sched, obs: Observation, *, method: str = "reconstruction", weight: float = 1.0,
                      rng=None):
  """Wraps `x0_fn(z_t, t) -> x̂0` into the conditioned x0 predictor of `method` (module docstring).

  `rng` draws the replacement noise (folded with the step's t, so each step gets fresh noise); it is needed
  whenever obs.known_frames is set, except by 'clean'. `weight` (w_r) may be traced; it is unused by 'replacement'.
  """
  if method not in METHODS:
    raise ValueError(f"conditioning method {method!r} unknown; choose one of {METHODS}")
  known = obs.known_frames
  if method in ("replacement", "clean") and known is None:
    raise ValueError(f"the {method} method needs known frames (Observation.known_frames); for other "
                     "observations (super-resolution) use method='reconstruction'")
  if known is not None and rng is None and method != "clean":
    raise ValueError("conditioning on known frames needs an rng for the replacement noise")

  def replace(z, t):
    if known is None:
      return z
    noise = jax.random.normal(jax.random.fold_in(rng, t[0]), z.shape, z.dtype)
    return jnp.where(_frames(known), gaussian.q_sample(sched, obs.y, t, noise), z)

  def paste(x0):
    return x0 if obs.project is None else obs.project(x0)

  def fn(z, t):
    if method == "clean":
      per_frame = jnp.broadcast_to(jnp.reshape(t, t.shape + (1,) * (2 - t.ndim)), known.shape)
      return paste(x0_fn(jnp.where(_frames(known), obs.y, z), jnp.where(known, 0, per_frame)))
    z = replace(z, t)
    if method == "replacement":
      return paste(x0_fn(z, t))

    def error(z):
      x0 = x0_fn(z, t)
      return jnp.sum(jnp.square(obs.y - obs.observe(x0))), x0

    grad, x0 = jax.grad(error, has_aux=True)(z)
    alpha = jnp.sqrt(extract(sched.alphas_cumprod, t, z.shape))
    step = weight * alpha / 2.0 * grad
    if known is not None:
      step = jnp.where(_frames(known), 0.0, step)
    return paste(x0 - step)

  return fn


def model_x0_fn(model_fn, sched, prediction: str):
  """The x̂0 (float32, unclipped) of a raw `model_fn(z_t, t)` output in parametrisation `prediction`."""
  def fn(z, t):
    out = model_fn(z, t).astype(jnp.float32)
    return gaussian.model_output_to_x0_eps(sched, z, t, out, prediction)[0]
  return fn
