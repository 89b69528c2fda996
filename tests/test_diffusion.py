"""Tests for vidgen_jax.diffusion: schedules, parameterisations, losses, guidance and samplers."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax import diffusion
from vidgen_jax.diffusion.schedules import extract

MU, SIGMA = 0.3, 0.5  # Gaussian data N(MU, SIGMA^2 I) for the analytic-oracle sampler tests.


@functools.lru_cache(maxsize=None)
def _sched(timesteps=1000, kind="cosine"):
  return diffusion.make_schedule(timesteps, kind)


def _reference_buffers(timesteps, s=0.008):
  """Independent float64 recomputation of video-diffusion-pytorch's cosine schedule and 12 buffers."""
  steps = np.arange(timesteps + 1, dtype=np.float64)
  f = np.cos((steps / timesteps + s) / (1 + s) * np.pi / 2) ** 2
  betas = np.clip(1 - (f[1:] / f[0]) / (f[:-1] / f[0]), 0, 0.9999)
  alphas = 1 - betas
  ac = np.cumprod(alphas)
  ac_prev = np.pad(ac[:-1], (1, 0), constant_values=1.0)
  post_var = betas * (1 - ac_prev) / (1 - ac)
  return dict(
      betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=ac ** 0.5,
      sqrt_one_minus_alphas_cumprod=(1 - ac) ** 0.5, log_one_minus_alphas_cumprod=np.log(1 - ac),
      sqrt_recip_alphas_cumprod=(1 / ac) ** 0.5, sqrt_recipm1_alphas_cumprod=(1 / ac - 1) ** 0.5,
      posterior_variance=post_var, posterior_log_variance_clipped=np.log(np.clip(post_var, 1e-20, None)),
      posterior_mean_coef1=betas * ac_prev ** 0.5 / (1 - ac),
      posterior_mean_coef2=(1 - ac_prev) * alphas ** 0.5 / (1 - ac))


# ----------------------------------------------------------------------------------------------- schedules


def test_cosine_schedule_reference_values():
  betas = diffusion.cosine_beta_schedule(1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  assert float(f"{betas[0]:.2e}") == 4.13e-5
  assert betas[-1] == 0.9999
  assert betas.min() >= 0 and betas.max() <= 0.9999
  ac = _sched().alphas_cumprod
  assert ac.dtype == jnp.float32
  np.testing.assert_allclose(float(ac[-1]), 2.4e-10, rtol=0.02)


@pytest.mark.parametrize("timesteps", [1000, 37])
def test_schedule_buffers_match_float64_reference(timesteps):
  sched = _sched(timesteps)
  ref = _reference_buffers(timesteps)
  assert len(ref) == 12 and set(ref) == {f.name for f in dataclasses.fields(sched)}
  assert sched.num_timesteps == timesteps
  for name, want in ref.items():
    got = getattr(sched, name)
    assert got.dtype == jnp.float32 and got.shape == (timesteps,), name
    np.testing.assert_allclose(np.asarray(got), want.astype(np.float32), rtol=1e-6, atol=0, err_msg=name)
  assert float(sched.posterior_log_variance_clipped[0]) == pytest.approx(np.log(1e-20), rel=1e-6)


def test_linear_schedule_and_unknown_kind():
  betas = diffusion.linear_beta_schedule(1000)
  assert betas.dtype == np.float64
  np.testing.assert_allclose([betas[0], betas[-1]], [1e-4, 0.02])
  np.testing.assert_allclose(diffusion.linear_beta_schedule(250)[[0, -1]], [4e-4, 0.08])
  assert _sched(50, "linear").num_timesteps == 50
  with pytest.raises(ValueError):
    diffusion.make_schedule(10, "quadratic")


def test_schedule_is_pytree_and_extract_broadcasts():
  sched = _sched(100)
  leaves = jax.tree_util.tree_leaves(sched)
  assert len(leaves) == 12
  doubled = jax.jit(lambda s: jax.tree_util.tree_map(lambda a: 2 * a, s))(sched)
  np.testing.assert_allclose(doubled.betas, 2 * sched.betas)
  t = jnp.array([0, 5, 99])
  vals = extract(sched.betas, t, (3, 2, 4, 4, 3))
  assert vals.shape == (3, 1, 1, 1, 1)
  np.testing.assert_array_equal(vals.ravel(), sched.betas[t])
  assert extract(sched.betas, 7, (3, 2)).shape == (1, 1)


# ------------------------------------------------------------------------------------ forward process & co


def _random_batch(key, shape=(6, 2, 3, 4, 4)):
  k1, k2 = jax.random.split(key)
  return jax.random.uniform(k1, shape, minval=-1, maxval=1), jax.random.normal(k2, shape)


def test_q_sample_formula_and_statistics():
  sched = _sched()
  x0 = jnp.full((4, 20000), 0.7)
  t = jnp.array([0, 300, 700, 999])
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  xt = diffusion.q_sample(sched, x0, t, noise)
  a, b = np.asarray(sched.sqrt_alphas_cumprod[t]), np.asarray(sched.sqrt_one_minus_alphas_cumprod[t])
  np.testing.assert_allclose(xt, a[:, None] * 0.7 + b[:, None] * noise, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(xt.mean(axis=1), 0.7 * a, atol=4 / np.sqrt(20000))
  np.testing.assert_allclose(xt.std(axis=1), b, rtol=0.03, atol=1e-6)


def test_parameterisation_conversions_are_mutual_inverses():
  sched = _sched()
  x0, eps = _random_batch(jax.random.PRNGKey(1))
  t = jnp.array([0, 1, 250, 500, 750, 900])
  xt = diffusion.q_sample(sched, x0, t, eps)
  v = diffusion.v_target(sched, x0, t, eps)
  a = extract(sched.sqrt_alphas_cumprod, t, x0.shape)
  b = extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.shape)
  np.testing.assert_allclose(v, a * eps - b * x0, atol=1e-6)
  close = functools.partial(np.testing.assert_allclose, atol=2e-4)
  close(diffusion.predict_x0_from_eps(sched, xt, t, eps), x0)
  close(diffusion.predict_eps_from_x0(sched, xt, t, x0), eps)
  close(diffusion.predict_x0_from_v(sched, xt, t, v), x0)
  close(diffusion.predict_eps_from_v(sched, xt, t, v), eps)
  for prediction, out in [("eps", eps), ("v", v), ("x0", x0)]:
    got_x0, got_eps = diffusion.model_output_to_x0_eps(sched, xt, t, out, prediction)
    close(got_x0, x0)
    close(got_eps, eps)
    np.testing.assert_array_equal(diffusion.training_target(sched, x0, t, eps, prediction), out)
  with pytest.raises(ValueError):
    diffusion.model_output_to_x0_eps(sched, xt, t, eps, "score")
  with pytest.raises(ValueError):
    diffusion.training_target(sched, x0, t, eps, "score")


def test_v_conversions_stay_accurate_at_the_last_step():
  sched = _sched()
  x0, eps = _random_batch(jax.random.PRNGKey(2))
  t = jnp.full((x0.shape[0],), 999)
  xt = diffusion.q_sample(sched, x0, t, eps)
  v = diffusion.v_target(sched, x0, t, eps)
  np.testing.assert_allclose(diffusion.predict_x0_from_v(sched, xt, t, v), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.predict_eps_from_v(sched, xt, t, v), eps, atol=1e-5)


def test_diffusion_loss_values():
  pred = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).reshape(2, 2, 2)
  target = jnp.array([[0.0, 0.0, 1.0, 1.0], [1.0, -1.0, 2.0, -2.0]]).reshape(2, 2, 2)
  l1 = diffusion.diffusion_loss(pred, target, "l1")
  l2 = diffusion.diffusion_loss(pred, target, "l2")
  assert l1.shape == (2,) and l2.shape == (2,)
  np.testing.assert_allclose(l1, [(1 + 2 + 2 + 3) / 4, (1 + 1 + 2 + 2) / 4])
  np.testing.assert_allclose(l2, [(1 + 4 + 4 + 9) / 4, (1 + 1 + 4 + 4) / 4])
  np.testing.assert_allclose(diffusion.diffusion_loss(pred, target, "l2", weights=jnp.array([2.0, 0.0])),
                             [2 * 18 / 4, 0.0])
  frame_mask = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # (B, F) weights broadcast over trailing axes
  np.testing.assert_allclose(diffusion.diffusion_loss(pred, target, "l1", weights=frame_mask),
                             [(1 + 2) / 4, (2 + 2) / 4])
  bf16 = diffusion.diffusion_loss(pred.astype(jnp.bfloat16), target, "l1")
  assert bf16.dtype == jnp.float32
  with pytest.raises(ValueError):
    diffusion.diffusion_loss(pred, target, "huber")


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_snr_loss_weights_make_every_prediction_weigh_the_clean_video_error_by_clipped_snr(prediction):
  sched = _sched()
  t = jnp.array([5, 200, 500, 800, 990])
  x0, noise = _random_batch(jax.random.PRNGKey(4), (5, 2, 3, 3))
  x_t = diffusion.q_sample(sched, x0, t, noise)
  target = diffusion.training_target(sched, x0, t, noise, prediction)
  pred = target + 0.3 * jax.random.normal(jax.random.PRNGKey(5), target.shape)
  x0_hat = diffusion.model_output_to_x0_eps(sched, x_t, t, pred, prediction)[0]
  ac = np.asarray(sched.alphas_cumprod, np.float64)[np.asarray(t)]
  snr = ac / (1 - ac)
  assert snr.min() < 1 < 5 < snr.max()   # the clip bites at both ends
  x0_err = np.square(np.asarray(x0_hat, np.float64) - np.asarray(x0, np.float64)).reshape(5, -1).mean(-1)
  for lo, hi in [(0.0, 5.0), (1.0, 5.0), (1.0, 1.0)]:
    w = diffusion.snr_loss_weights(sched, t, prediction, (lo, hi))
    got = diffusion.diffusion_loss(pred, target, "l2", w)
    np.testing.assert_allclose(got, np.clip(snr, lo, hi) * x0_err, rtol=2e-3)
  assert diffusion.snr_loss_weights(sched, t, prediction, ()) is None
  per_frame = diffusion.snr_loss_weights(sched, jnp.stack([t, t[::-1]], 1), prediction, (0, 5))
  assert per_frame.shape == (5, 2)
  np.testing.assert_allclose(per_frame[:, 0], diffusion.snr_loss_weights(sched, t, prediction, (0, 5)))


def test_snr_loss_weights_refuse_bad_clips_and_predictions():
  sched = _sched(100)
  for clip in [(5.0, 1.0), (-1.0, 1.0)]:
    with pytest.raises(ValueError, match="snr_clip"):
      diffusion.snr_loss_weights(sched, jnp.array([3]), "x0", clip)
  with pytest.raises(ValueError, match="prediction"):
    diffusion.snr_loss_weights(sched, jnp.array([3]), "score", (0, 5))


def test_q_posterior_is_the_gaussian_product():
  sched = _sched()
  ref = _reference_buffers(1000)
  x0, xt = _random_batch(jax.random.PRNGKey(3), (5, 3, 4))
  t = np.array([1, 10, 400, 800, 999])
  mean, var, log_var = diffusion.q_posterior(sched, x0, xt, jnp.asarray(t))
  # q(x_{t-1}|x_t, x0) ∝ N(x_t; sqrt(α_t) x_{t-1}, β_t) · N(x_{t-1}; sqrt(ᾱ_{t-1}) x0, 1 − ᾱ_{t-1}).
  beta, ac_prev = ref["betas"][t][:, None, None], ref["alphas_cumprod_prev"][t][:, None, None]
  precision = (1 - beta) / beta + 1 / (1 - ac_prev)
  want_mean = (np.sqrt(1 - beta) * np.asarray(xt, np.float64) / beta
               + np.sqrt(ac_prev) * np.asarray(x0, np.float64) / (1 - ac_prev)) / precision
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, 1 / precision, rtol=1e-5)
  np.testing.assert_allclose(log_var, np.log(1 / precision), rtol=1e-5)
  assert var.shape == (5, 1, 1)
  # At t=0 the posterior collapses onto x0 (zero variance, log-variance clipped at log 1e-20).
  mean0, var0, log_var0 = diffusion.q_posterior(sched, x0, xt, jnp.zeros((5,), jnp.int32))
  np.testing.assert_allclose(mean0, x0, atol=1e-6)
  np.testing.assert_array_equal(var0, 0.0)
  np.testing.assert_allclose(log_var0, np.log(1e-20), rtol=1e-6)


def test_dynamic_threshold():
  rng = np.random.default_rng(0)
  small = rng.uniform(-0.9, 0.9, (1, 4, 50))  # quantile < 1: s clamps to 1, nothing changes
  big = rng.normal(0.0, 3.0, (1, 4, 50))
  x0 = jnp.asarray(np.concatenate([small, big]), jnp.float32)
  out = diffusion.dynamic_threshold(x0, 0.9)
  np.testing.assert_allclose(out[0], small[0], atol=1e-6)
  s = np.quantile(np.abs(big).reshape(-1), 0.9)
  assert s > 1
  np.testing.assert_allclose(out[1], np.clip(big[0], -s, s) / s, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out).max()) <= 1.0 + 1e-6
  assert np.mean(np.abs(np.asarray(out[1])) >= 1.0 - 1e-6) == pytest.approx(0.1, abs=0.02)
  np.testing.assert_array_equal(diffusion.clip_x0(x0), jnp.clip(x0, -1, 1))
  np.testing.assert_array_equal(diffusion.clip_x0(x0, 0.9), out)


# ---------------------------------------------------------------------------------------------- guidance


def test_cfg_combine():
  cond, uncond = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
  np.testing.assert_allclose(diffusion.cfg_combine(cond, uncond, 1.0), cond)
  np.testing.assert_allclose(diffusion.cfg_combine(cond, uncond, 0.0), uncond)
  np.testing.assert_allclose(diffusion.cfg_combine(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


def _counting_apply():
  calls = []

  def apply_fn(x, t, null, emb):
    calls.append(x.shape[0])  # Python side effect: runs once per trace / eager call
    assert null.shape == (x.shape[0],) and null.dtype == jnp.bool_ and emb.shape[0] == x.shape[0]
    cond = x * 2.0 + emb[:, :, None] + t[:, None, None]
    return jnp.where(null[:, None, None], x - 1.0, cond)

  return apply_fn, calls


@pytest.mark.parametrize("scale", [1.0, 1, 4.0])
def test_make_guided_fn(scale):
  apply_fn, calls = _counting_apply()
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5))
  t = jnp.array([4, 5, 6], jnp.int32)
  emb = jnp.arange(6.0).reshape(3, 2)
  out = jax.jit(diffusion.make_guided_fn(apply_fn, scale))(x, t, emb)
  cond = x * 2.0 + emb[:, :, None] + t[:, None, None]
  np.testing.assert_allclose(out, (x - 1.0) + scale * (cond - (x - 1.0)), rtol=1e-5, atol=1e-5)
  assert calls == ([3] if scale == 1 else [6])  # one traced call; batch doubled only when guiding


def test_make_guided_fn_traced_scale():
  apply_fn, calls = _counting_apply()
  x, t, emb = jnp.ones((2, 1, 3)), jnp.array([0, 1]), jnp.zeros((2, 1))
  fn = jax.jit(lambda x, s: diffusion.make_guided_fn(apply_fn, s)(x, t, emb))
  for s in [1.0, 2.5]:
    np.testing.assert_allclose(fn(x, s), jnp.broadcast_to(s * (2.0 + t[:, None, None]), x.shape), rtol=1e-6)
  assert calls == [4]


# ---------------------------------------------------------------------------------------------- samplers


def _coefs(sched, t, x):
  return (extract(sched.sqrt_alphas_cumprod, t, x.shape),
          extract(sched.sqrt_one_minus_alphas_cumprod, t, x.shape))


def _point_oracle(sched, x_star, prediction="eps"):
  """Exact model for data concentrated on x_star: eps = (x_t − a·x*)/b, v = a·eps − b·x*."""
  def model_fn(x, t):
    a, b = _coefs(sched, t, x)
    eps = (x - a * x_star) / b
    return eps if prediction == "eps" else a * eps - b * x_star
  return model_fn


def _gaussian_oracle(sched, prediction="eps"):
  """Bayes-optimal model for data N(MU, SIGMA² I): E[eps | x_t] and E[v | x_t] in closed form."""
  def model_fn(x, t):
    a, b = _coefs(sched, t, x)
    var = a**2 * SIGMA**2 + b**2
    eps = b * (x - a * MU) / var
    x0 = MU + a * SIGMA**2 * (x - a * MU) / var
    return eps if prediction == "eps" else a * eps - b * x0
  return model_fn


def _gaussian_chain(ref, times, ddpm):
  """Exact float64 (m, k, extra_var) of the sampler chain for the Gaussian oracle: x = m + k·x_T + noise."""
  ac = ref["alphas_cumprod"]
  m, k, extra = 0.0, 1.0, 0.0
  for i, t in enumerate(times):
    a, b = np.sqrt(ac[t]), np.sqrt(1 - ac[t])
    var = a * a * SIGMA**2 + b * b
    g_x0, g_eps = a * SIGMA**2 / var, b / var  # d x0_hat / dx, d eps_hat / dx
    if ddpm:
      c1, c2 = ref["posterior_mean_coef1"][t], ref["posterior_mean_coef2"][t]
      slope, offset, noise_var = c1 * g_x0 + c2, c1 * (MU - g_x0 * a * MU), ref["posterior_variance"][t]
    else:
      ac_prev = ac[times[i + 1]] if i + 1 < len(times) else 1.0
      ap, bp = np.sqrt(ac_prev), np.sqrt(1 - ac_prev)
      slope, offset, noise_var = ap * g_x0 + bp * g_eps, ap * (MU - g_x0 * a * MU) - bp * g_eps * a * MU, 0.0
    m, k, extra = slope * m + offset, slope * k, slope**2 * extra + noise_var
  return m, k, extra


def test_sampling_timesteps():
  np.testing.assert_array_equal(diffusion.sampling_timesteps(10, 10), np.arange(9, -1, -1))
  np.testing.assert_array_equal(diffusion.sampling_timesteps(10, 4), [9, 6, 3, 0])
  np.testing.assert_array_equal(diffusion.sampling_timesteps(1000, 1), [999])
  ts = diffusion.sampling_timesteps(1000, 50)
  assert ts.dtype == np.int32 and ts[0] == 999 and ts[-1] == 0 and len(set(ts.tolist())) == 50
  assert np.all(np.diff(ts) < 0) and np.ptp(np.diff(ts)) <= 1
  for bad in [0, 11]:
    with pytest.raises(ValueError):
      diffusion.sampling_timesteps(10, bad)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_samplers_recover_a_single_data_point(prediction):
  sched = _sched()
  shape = (2, 3, 4, 4, 3)
  x_star = jax.random.uniform(jax.random.PRNGKey(7), shape, minval=-0.9, maxval=0.9)
  model_fn = _point_oracle(sched, x_star, prediction)
  rng = jax.random.PRNGKey(0)
  ddim = jax.jit(
      lambda s, r: diffusion.ddim_sample(model_fn, s, shape, r, num_steps=20, prediction=prediction))
  np.testing.assert_allclose(ddim(sched, rng), x_star, atol=1e-4)
  ddpm = jax.jit(lambda s, r: diffusion.ddpm_sample(model_fn, s, shape, r, prediction=prediction))
  np.testing.assert_allclose(ddpm(sched, rng), x_star, atol=1e-3)
  thresholded = diffusion.ddim_sample(model_fn, sched, shape, rng, num_steps=10, prediction=prediction,
                                      dynamic_threshold_pct=0.95)
  np.testing.assert_allclose(thresholded, x_star, atol=1e-4)


def test_ddim_gaussian_data_matches_exact_chain_and_target():
  sched, ref = _sched(), _reference_buffers(1000)
  shape = (4096, 8)
  x_T = jax.random.normal(jax.random.PRNGKey(11), shape)
  outs = {}
  for prediction in ["eps", "v"]:
    outs[prediction] = diffusion.ddim_sample(
        _gaussian_oracle(sched, prediction), sched, shape, jax.random.PRNGKey(0), num_steps=50,
        prediction=prediction, clip_denoised=False, x_T=x_T)
  # Deterministic and affine in x_T for Gaussian data: compare elementwise with the exact chain. The eps
  # path is less accurate in float32: x0 = (x_t − b·eps)/a amplifies rounding by 1/a ≈ 6e4 at t = T−1.
  m, k, _ = _gaussian_chain(ref, diffusion.sampling_timesteps(1000, 50), ddpm=False)
  np.testing.assert_allclose(outs["v"], m + k * np.asarray(x_T), atol=1e-5)
  np.testing.assert_allclose(outs["eps"], m + k * np.asarray(x_T), atol=5e-4)
  assert abs(m - MU) < 1e-3 and abs(k - SIGMA) < 0.04 * SIGMA  # 50-step discretisation error is ~3%
  x = np.asarray(outs["eps"])
  assert abs(x.mean() - MU) < 4 * SIGMA / np.sqrt(x.size)
  assert abs(x.std() - SIGMA) < 0.05 * SIGMA


def test_ddpm_gaussian_data_statistics():
  sched, ref = _sched(100), _reference_buffers(100)
  shape = (8192, 16)
  def sample(s, r, prediction):
    return diffusion.ddpm_sample(_gaussian_oracle(s, prediction), s, shape, r, prediction=prediction,
                                 clip_denoised=False)

  outs = {p: jax.jit(sample, static_argnums=2)(sched, jax.random.PRNGKey(3), p) for p in ["eps", "v"]}
  np.testing.assert_allclose(outs["v"], outs["eps"], atol=2e-4)  # same noise, same chain
  x = np.asarray(outs["eps"])
  m, k, extra = _gaussian_chain(ref, list(range(99, -1, -1)), ddpm=True)
  std = np.sqrt(k**2 + extra)
  n = x.size
  assert abs(x.mean() - m) < 4 * std / np.sqrt(n)
  assert abs(x.std() - std) < 4 * std / np.sqrt(2 * n)
  # The small fixed posterior variance makes a T=100 chain a few percent too narrow.
  assert abs(m - MU) < 1e-3 and abs(std - SIGMA) < 0.05 * SIGMA
  assert abs(x.mean() - MU) < 0.01 and abs(x.std() - SIGMA) < 0.05 * SIGMA


def test_ddim_eta_one_with_all_steps_equals_ddpm():
  sched = _sched(50)
  shape = (16, 6)
  model_fn = _gaussian_oracle(sched)
  rng = jax.random.PRNGKey(5)
  ddpm = diffusion.ddpm_sample(model_fn, sched, shape, rng, clip_denoised=False)
  ddim = diffusion.ddim_sample(model_fn, sched, shape, rng, num_steps=50, eta=1.0, clip_denoised=False)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
  traced_eta = jax.jit(lambda e: diffusion.ddim_sample(model_fn, sched, shape, rng, num_steps=50, eta=e,
                                                      clip_denoised=False))
  np.testing.assert_allclose(traced_eta(1.0), ddpm, atol=1e-4)
  deterministic = diffusion.ddim_sample(model_fn, sched, shape, rng, num_steps=50, clip_denoised=False)
  np.testing.assert_allclose(traced_eta(0.0), deterministic, atol=1e-5)


def test_samplers_trace_the_model_once():
  sched = _sched()
  calls = []

  def model_fn(x, t):
    calls.append(1)
    assert t.shape == (x.shape[0],) and t.dtype == jnp.int32
    return jnp.zeros_like(x)

  shape = (2, 4)
  rng = jax.random.PRNGKey(0)
  for num_steps in [10, 500]:
    calls.clear()
    out = jax.jit(lambda s, r: diffusion.ddim_sample(model_fn, s, shape, r, num_steps=num_steps))(sched, rng)
    assert out.shape == shape and calls == [1]
  calls.clear()
  out = jax.jit(lambda s, r: diffusion.ddpm_sample(model_fn, s, shape, r))(sched, rng)
  assert out.shape == shape and out.dtype == jnp.float32 and calls == [1]
  assert float(jnp.abs(out).max()) <= 1.0


def test_threshold_needs_clipping():
  with pytest.raises(ValueError):
    diffusion.ddim_sample(lambda x, t: x, _sched(10), (1, 2), jax.random.PRNGKey(0), num_steps=2,
                          clip_denoised=False, dynamic_threshold_pct=0.9)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_shift_lowers_every_log_snr_by_two_log_shift(kind):
  base, shifted = _sched(1000, kind), diffusion.make_schedule(1000, kind, shift=3.0)
  log_snr = lambda s: np.log(np.asarray(s.alphas_cumprod, np.float64)) - np.log1p(
      -np.asarray(s.alphas_cumprod, np.float64))
  inner = slice(0, 990)   # away from the clipped last betas
  np.testing.assert_allclose(log_snr(shifted)[inner] - log_snr(base)[inner], -2 * np.log(3.0), atol=2e-3)
  np.testing.assert_array_equal(diffusion.make_schedule(1000, kind, shift=1.0).betas, base.betas)
  with pytest.raises(ValueError, match="positive"):
    diffusion.make_schedule(10, kind, shift=0.0)
