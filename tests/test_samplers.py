"""Fast samplers: DPM-Solver++(2M) against exact oracles, against DDIM, its convergence order and wiring."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vidgen_jax import diffusion
from vidgen_jax.diffusion import samplers
from vidgen_jax.diffusion.schedules import Schedule, extract

MU, SIGMA = 0.3, 0.5  # Gaussian data N(MU, SIGMA² I)


@functools.lru_cache(maxsize=None)
def _cosine(timesteps=1000):
  return diffusion.make_schedule(timesteps, "cosine")


@functools.lru_cache(maxsize=None)
def _loglinear(timesteps=961, lam_max=5.0, lam_min=-5.0):
  """A schedule whose λ = log(α/σ) is linear in the index, so 'uniform' spacing is uniform in λ."""
  lam = np.linspace(lam_max, lam_min, timesteps)
  ac = 1.0 / (1.0 + np.exp(-2.0 * lam))
  return Schedule.from_betas(1.0 - ac / np.concatenate([[1.0], ac[:-1]]))


def _coefs(sched, t, x):
  return (extract(sched.sqrt_alphas_cumprod, t, x.shape),
          extract(sched.sqrt_one_minus_alphas_cumprod, t, x.shape))


def _as_prediction(a, b, eps, x0, prediction):
  return {"eps": eps, "v": a * eps - b * x0, "x0": x0}[prediction]


def _gaussian_oracle(sched, prediction):
  """The exact denoiser for data N(MU, SIGMA² I): E[x0 | x_t] and E[eps | x_t] in closed form."""
  def model_fn(x, t):
    a, b = _coefs(sched, t, x)
    var = a**2 * SIGMA**2 + b**2
    return _as_prediction(a, b, b * (x - a * MU) / var, MU + a * SIGMA**2 * (x - a * MU) / var, prediction)
  return model_fn


def _point_oracle(sched, x_star, prediction):
  """The exact denoiser for data concentrated on x_star."""
  def model_fn(x, t):
    a, b = _coefs(sched, t, x)
    return _as_prediction(a, b, (x - a * x_star) / b, jnp.broadcast_to(x_star, x.shape), prediction)
  return model_fn


def _exact_flow(sched, x_T):
  """The probability-flow ODE from index T−1 to index 0 followed by the x0 read-out at index 0, in float64.

  For Gaussian data the flow keeps z = (x_t − a·MU)/sqrt(a²SIGMA² + b²) fixed; at index 0 the read-out is
  E[x0 | x_0] = MU + SIGMA·z·a0·SIGMA/sqrt(a0²SIGMA² + b0²) (within 1e-4 of the ODE's endpoint MU + SIGMA·z).
  """
  a, b = (np.float64(v[-1]) for v in (sched.sqrt_alphas_cumprod, sched.sqrt_one_minus_alphas_cumprod))
  a0, b0 = (np.float64(v[0]) for v in (sched.sqrt_alphas_cumprod, sched.sqrt_one_minus_alphas_cumprod))
  z = (np.asarray(x_T, np.float64) - a * MU) / np.sqrt(a**2 * SIGMA**2 + b**2)
  return MU + SIGMA * z * a0 * SIGMA / np.sqrt(a0**2 * SIGMA**2 + b0**2)


def _rms(x, ref):
  return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def _run(name, num_steps, *, sched, x, prediction="v"):
  """A deterministic sampler run from x_T = x with the Gaussian oracle, clipping off."""
  fn = {"ddim": samplers.ddim_sample, "dpmpp2m": samplers.dpmpp_2m_sample}[name]
  return fn(_gaussian_oracle(sched, prediction), sched, x.shape, jax.random.PRNGKey(0), num_steps=num_steps,
            prediction=prediction, clip_denoised=False, x_T=x)


def test_dpmpp_2m_gaussian_data_matches_the_exact_flow_and_beats_ddim():
  sched = _cosine()
  x_T = jax.random.normal(jax.random.PRNGKey(1), (512, 8))
  exact = _exact_flow(sched, x_T)
  runs = [(name, n, "v") for name in ("ddim", "dpmpp2m") for n in (10, 20)] + [("dpmpp2m", 20, "eps"),
                                                                                ("dpmpp2m", 20, "x0")]
  outs = jax.jit(lambda x: {r: _run(*r[:2], x=x, prediction=r[2], sched=sched) for r in runs})(x_T)  # one compile
  err = {r[:2]: _rms(outs[r], exact) for r in runs if r[2] == "v"}
  # Measured RMS errors: DDIM 7.9e-2 / 3.9e-2, DPM-Solver++(2M) 3.1e-2 / 1.6e-3 at 10 / 20 steps.
  assert err["dpmpp2m", 10] < 0.5 * err["ddim", 10]
  assert err["dpmpp2m", 20] < 0.1 * err["ddim", 20]
  assert err["dpmpp2m", 20] < 4e-3
  for prediction in ("eps", "x0"):  # the same solver whatever the model predicts
    assert _rms(outs["dpmpp2m", 20, prediction], exact) < 4e-3
  x = np.asarray(outs["dpmpp2m", 20, "eps"])
  assert abs(x.mean() - MU) < 4 * SIGMA / np.sqrt(x.size)
  assert abs(x.std() - SIGMA) < 4 * SIGMA / np.sqrt(2 * x.size)


def test_convergence_orders_on_a_log_snr_uniform_grid():
  sched = _loglinear()
  x_T = jax.random.normal(jax.random.PRNGKey(2), (4096,))
  exact = _exact_flow(sched, x_T)
  # 960 = T − 1 is divisible by 20, 40 and 80 intervals, so these grids are exactly uniform in λ.
  runs = [(name, n) for name in ("ddim", "dpmpp2m") for n in (21, 41, 81)]
  outs = jax.jit(lambda x: {r: _run(*r, sched=sched, x=x) for r in runs})(x_T)
  err = {name: np.array([_rms(outs[name, n], exact) for n in (21, 41, 81)]) for name in ("ddim", "dpmpp2m")}
  ratios = {name: e[:-1] / e[1:] for name, e in err.items()}  # error reduction per halving of the step
  # Measured: DDIM 1.94, 1.97 (first order); DPM-Solver++(2M) 3.67, 3.93 (second order).
  assert np.all((ratios["ddim"] > 1.8) & (ratios["ddim"] < 2.2)), ratios
  assert np.all((ratios["dpmpp2m"] > 3.3) & (ratios["dpmpp2m"] < 4.6)), ratios
  assert np.all(err["dpmpp2m"] < 0.15 * err["ddim"]), err


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_every_sampler_recovers_a_point_mass(prediction):
  sched = _cosine()
  shape = (2, 3, 4, 4, 3)
  x_star = jax.random.uniform(jax.random.PRNGKey(7), shape, minval=-2.0, maxval=2.0)
  model_fn = _point_oracle(sched, x_star, prediction)
  common = dict(prediction=prediction, clip_denoised=False)

  @jax.jit
  def run_all(x_T, rng):
    return {
        "ddim": samplers.ddim_sample(model_fn, sched, shape, rng, num_steps=10, x_T=x_T, **common),
        "ddpm": samplers.ddpm_sample(model_fn, sched, shape, rng, x_T=x_T, **common),
        "dpmpp2m": samplers.dpmpp_2m_sample(model_fn, sched, shape, rng, num_steps=10, x_T=x_T, **common),
        "dpmpp2m_logsnr": samplers.dpmpp_2m_sample(model_fn, sched, shape, rng, num_steps=7, x_T=x_T,
                                                   timesteps="logsnr", lower_order_final=False, **common),
    }

  for seed, scale in [(0, 1.0), (1, 10.0)]:
    outs = run_all(scale * jax.random.normal(jax.random.PRNGKey(seed), shape), jax.random.PRNGKey(seed + 5))
    for name, out in outs.items():
      np.testing.assert_allclose(out, x_star, atol=1e-4, err_msg=f"{name} x_T scale {scale}")


def _arbitrary_model(x, t):
  """A nonlinear, t-dependent model whose x0 often leaves [−1, 1] (so clipping matters)."""
  return 1.3 * jnp.tanh(0.8 * x + 0.3) + 0.2 * jnp.sin(t[:, None].astype(jnp.float32) / 150.0)


@pytest.mark.parametrize("prediction,clip,pct", [("x0", True, 0.9), ("eps", False, None)])
def test_first_order_cases_equal_ddim(prediction, clip, pct):
  sched = _cosine()
  shape = (4, 6)
  rng = jax.random.PRNGKey(3)
  kw = dict(prediction=prediction, clip_denoised=clip, dynamic_threshold_pct=pct)
  runs = [(2, False), (3, True), (3, False), (4, True)]

  @jax.jit
  def run_all():
    ddim = {n: samplers.ddim_sample(_arbitrary_model, sched, shape, rng, num_steps=n, **kw) for n in (2, 3, 4)}
    dpm = {r: samplers.dpmpp_2m_sample(_arbitrary_model, sched, shape, rng, num_steps=r[0], lower_order_final=r[1],
                                       **kw) for r in runs}
    return ddim, dpm

  ddim, dpm = run_all()
  # The first step and, with lower_order_final, the step onto index 0 are first order: DDIM's step exactly
  # (and the final jump to x0 is the same in both).
  for n, lof in runs[:2]:
    np.testing.assert_allclose(dpm[n, lof], ddim[n], rtol=1e-5, atol=2e-5, err_msg=f"{n} {lof}")
  # The second-order correction is live as soon as a step has a predecessor and is not forced first order.
  assert float(jnp.abs(dpm[3, False] - ddim[3]).max()) > 1e-3
  assert float(jnp.abs(dpm[4, True] - ddim[4]).max()) > 1e-3


def test_dpmpp_2m_traces_once_is_deterministic_and_clips():
  sched = _cosine()
  calls = []

  def model_fn(x, t):
    calls.append(1)
    assert t.shape == (x.shape[0],) and t.dtype == jnp.int32
    return 0.6 * x + 0.4  # x0 = (x − b·eps)/a often leaves [−1, 1]

  shape = (2, 4)
  rng = jax.random.PRNGKey(0)
  for num_steps in [2, 500]:
    calls.clear()
    fn = jax.jit(lambda s, r: samplers.dpmpp_2m_sample(model_fn, s, shape, r, num_steps=num_steps))
    out = fn(sched, rng)
    assert out.shape == shape and out.dtype == jnp.float32 and calls == [1]
    assert float(jnp.abs(out).max()) <= 1.0
    np.testing.assert_array_equal(fn(sched, rng), out)
    assert calls == [1]
  assert not np.allclose(fn(sched, jax.random.PRNGKey(1)), out)


def test_sampling_timesteps_logsnr_spacing():
  cos = _cosine()
  for n in [2, 10, 40, 200]:
    ts = samplers.sampling_timesteps(1000, n, "logsnr", cos)
    assert ts.dtype == np.int32 and len(ts) == n and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
  np.testing.assert_array_equal(samplers.sampling_timesteps(1000, 1000, "logsnr", cos), np.arange(999, -1, -1))
  # Where λ is linear in the index the two spacings agree.
  lin = _loglinear()
  for n in [11, 41]:
    np.testing.assert_array_equal(samplers.sampling_timesteps(961, n, "logsnr", lin),
                                  samplers.sampling_timesteps(961, n))
  # Away from the clipped high-noise end of the cosine schedule the λ increments are even.
  lam = np.asarray(samplers.log_snr(cos, samplers.sampling_timesteps(1000, 10, "logsnr", cos)))
  np.testing.assert_allclose(np.diff(lam)[4:], np.diff(lam)[4:].mean(), rtol=0.1)
  with pytest.raises(ValueError, match="spacing"):
    samplers.sampling_timesteps(1000, 10, "trailing")
  with pytest.raises(ValueError, match="schedule"):
    samplers.sampling_timesteps(1000, 10, "logsnr")
  with pytest.raises(ValueError, match="close over"):
    jax.jit(lambda s: samplers.dpmpp_2m_sample(lambda x, t: x, s, (1, 2), jax.random.PRNGKey(0), num_steps=4,
                                               timesteps="logsnr"))(cos)
  closed = jax.jit(lambda r: samplers.dpmpp_2m_sample(lambda x, t: x, cos, (1, 2), r, num_steps=4,
                                                      timesteps="logsnr"))
  assert closed(jax.random.PRNGKey(0)).shape == (1, 2)
  with pytest.raises(ValueError):
    samplers.dpmpp_2m_sample(lambda x, t: x, cos, (1, 2), jax.random.PRNGKey(0), num_steps=4,
                             clip_denoised=False, dynamic_threshold_pct=0.9)


class _ConstantX0Model:
  """Stands in for the U-Net in `vdm.sample`: predicts the same x0 whatever the input."""

  def __init__(self, value):
    self.value = value

  def apply(self, params, x, t, cond, null_cond, text_tokens, text_mask):
    return jnp.full_like(x, self.value)


def test_vdm_sample_dispatches_dpmpp2m():
  from vidgen_jax.train import vdm
  config = ml_collections.ConfigDict({
      "sample": {"sampler": "dpmpp2m", "steps": 5, "eta": 0.0, "cond_scale": 3.0, "clip_denoised": True},
      "data": {"num_frames": 2, "image_size": 4}, "diffusion": {"prediction": "x0"}})
  kw = dict(model=_ConstantX0Model(0.25), sched=_cosine(100), config=config)
  tokens, mask = jnp.ones((2, 3, 5)), jnp.ones((2, 3), bool)
  out = jax.jit(functools.partial(vdm.sample, **kw))({}, jax.random.PRNGKey(0), tokens, mask)
  assert out.shape == (2, 2, 4, 4, 3)
  np.testing.assert_allclose(out, 0.25, atol=1e-5)
  with pytest.raises(ValueError, match="ddim, ddpm or dpmpp2m"):
    vdm.sample({}, jax.random.PRNGKey(0), tokens, mask, sampler="euler", **kw)


def test_cli_and_config_validation_accept_dpmpp2m():
  from vidgen_jax import cli
  args = cli._parser().parse_args(["eval", "--workdir", "w", "--sampler", "dpmpp2m", "--steps", "10"])
  assert args.sampler == "dpmpp2m" and args.steps == 10
  with pytest.raises(SystemExit):
    cli._parser().parse_args(["eval", "--workdir", "w", "--sampler", "euler"])
  from vidgen_jax import configs
  from vidgen_jax.train import validation
  c = configs.load_config_file("configs/vdm_shapes.py")
  c.sample.sampler = "dpmpp2m"
  assert validation.vdm_problems(c, num_devices=8) == []
  c.sample.sampler = "euler"
  assert any("sample.sampler" in p for p in validation.vdm_problems(c, num_devices=8))


# ---------------------------------------------------------------------------------- pyramid sampling


def test_pyramid_timesteps_delay_each_frame_and_visit_every_step_in_order():
  steps, frames, offset = 6, 4, 2
  now, nxt = samplers.pyramid_timesteps(1000, steps, frames, offset)
  seq = samplers.sampling_timesteps(1000, steps)
  assert now.shape == nxt.shape == (steps + offset * (frames - 1), frames)
  np.testing.assert_array_equal(now[1:], nxt[:-1])
  assert (nxt[-1] == -1).all()
  for f in range(frames):
    moves = now[:, f] != nxt[:, f]
    np.testing.assert_array_equal(now[moves, f], seq)          # every DDIM step once, in order ...
    assert np.argmax(moves) == offset * f                      # ... starting offset·f iterations late
  assert (np.diff(np.where(now < 0, -1, now), axis=1) >= 0).all()   # earlier frames never noisier
  np.testing.assert_array_equal(samplers.pyramid_timesteps(1000, steps, frames, 0)[0][:, 0], seq)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_pyramid_ddim_equals_ddim_for_a_per_element_denoiser(eta):
  """Frames of i.i.d. Gaussian data are independent, so delaying some of them changes nothing: every frame
  takes the same DDIM steps with its own noise (eta > 0 only changes which draw a step uses)."""
  sched = _cosine()
  model_fn = _gaussian_oracle(sched, "x0")
  shape = (2, 5, 4, 4, 3)
  plain = samplers.ddim_sample(model_fn, sched, shape, jax.random.key(0), num_steps=12, prediction="x0",
                               clip_denoised=False)
  for offset in (1, 4):
    pyramid = samplers.ddim_sample(model_fn, sched, shape, jax.random.key(0), num_steps=12, eta=0.0,
                                   prediction="x0", clip_denoised=False, frame_offset=offset)
    np.testing.assert_allclose(pyramid, plain, atol=1e-5)
  noisy = samplers.ddim_sample(model_fn, sched, shape, jax.random.key(0), num_steps=12, eta=eta,
                               prediction="x0", clip_denoised=False, frame_offset=2)
  assert np.isfinite(noisy).all() and noisy.std() > 0.1


def test_pyramid_ddim_calls_the_model_with_per_frame_times_and_denoises_earlier_frames_first():
  sched = _cosine()
  seen = []

  def model_fn(x, t):
    seen.append(t)
    return _point_oracle(sched, 0.25, "x0")(x, t)

  out = samplers.ddim_sample(model_fn, sched, (1, 3, 2, 2, 1), jax.random.key(1), num_steps=5, prediction="x0",
                             frame_offset=3)
  np.testing.assert_allclose(out, 0.25, atol=1e-5)             # the last step of each frame returns x0
  assert seen[0].shape == (1, 3)                               # traced once by the scan, per-frame times
  with pytest.raises(ValueError, match="frame_offset"):
    samplers.pyramid_timesteps(1000, 5, 3, -1)
