"""Expert denoisers by noise level (eDiff-I, Balaji et al. 2022): one model for the noisy steps, another
for the nearly clean ones, as a pure x0 predictor that any sampler of `samplers` runs with prediction='x0'.

Why here: on moving shapes an x0-predicting model decides the motion well at high noise but loses the fine
edge of a turning shape at low noise, while a v-predicting model keeps that edge but decides motion late
(docs/ablations.md). The two models may use different parametrisations; each is wrapped into an x0
predictor first (`conditioning.model_x0_fn`), so they must share only the noise schedule and the data shape.

The switch is a schedule index: steps at t >= switch_t use the high-noise expert, steps below it the
low-noise one. Samplers step every sample together, so one scalar decides per model call: the largest t in
the call (with per-frame levels, clean conditioning or pyramid sampling, the noisiest frame decides).
`lax.cond` runs only the chosen model, so a split costs what one model costs.
"""
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from vidgen_jax.diffusion import losses


def switch_index(fraction: float, num_timesteps: int) -> int:
  """The schedule index at which the low-noise expert takes over, for a switch at t/T = `fraction`.

  fraction 0 gives index 0 (the high-noise expert runs every step), 1 gives T (the low-noise one runs every
  step); in between, steps with t/T >= fraction are the high-noise expert's."""
  fraction = float(fraction)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"the expert switch is a noise level t/T in [0, 1], got {fraction}")
  return int(round(fraction * num_timesteps))


def trained_window(diffusion_cfg, num_timesteps: int):
  """[lo, hi) schedule indices a model was trained on (diffusion.t_range; every level for configs before it)."""
  return losses.timestep_window(num_timesteps, losses.config_t_range(diffusion_cfg))


def _levels(window, num_timesteps):
  return f"t/T in [{window[0] / num_timesteps:g}, {window[1] / num_timesteps:g})"


def check_covers(window, needed, num_timesteps: int, who: str):
  """Raises ValueError unless a model trained on schedule indices `window` = [lo, hi) covers the indices
  `needed` = [lo, hi) a sampler will ask it for (nothing is needed when needed is empty)."""
  if needed[0] < needed[1] and (window[0] > needed[0] or window[1] < needed[1]):
    raise ValueError(f"{who} was trained on the noise levels {_levels(window, num_timesteps)} "
                     f"(diffusion.t_range) but would denoise {_levels(needed, num_timesteps)}: pair it in an "
                     "expert split whose other model covers the rest (--low-noise-workdir, --switch)")


def switch_x0_fn(high_x0_fn, low_x0_fn, switch_t):
  """x̂0(z_t, t) from `high_x0_fn` where max(t) >= switch_t, else from `low_x0_fn` (module docstring).

  Both are `(z_t, t) -> x̂0` functions of the same arrays; t is (B,) or per-frame (B, T) schedule indices.
  switch_t may be traced."""
  def fn(z, t):
    high = jnp.max(jnp.asarray(t)) >= switch_t
    return jax.lax.cond(high, lambda: high_x0_fn(z, t).astype(jnp.float32),
                        lambda: low_x0_fn(z, t).astype(jnp.float32))
  return fn


@dataclass(frozen=True)
class LowNoiseExpert:
  """The second denoiser of an expert split: a model (its `apply` takes the same inputs as the first), its
  parametrisation ('eps', 'v' or 'x0'), the schedule index below which it runs (`switch_index`) and its
  classifier-free guidance weight (None: the sampler's, as the high-noise model's)."""
  model: Any
  prediction: str
  switch_t: int
  cond_scale: float | None = None
