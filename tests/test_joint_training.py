"""Joint image+video training: images appended as frames, isolated by attention masks, sharded like videos."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.unet3d_setup import random_params
from vidgen_jax.models.unet3d import Unet3D
from vidgen_jax.train import vdm

T, K = 4, 2


def _model(**kw):
  return Unet3D(dim=8, cond_dim=6, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, text_token_dim=6,
                use_sparse_linear_attn=True, **kw)


def _inputs(seed=0, b=2):
  r = np.random.default_rng(seed)
  x = jnp.asarray(r.standard_normal((b, T + K, 8, 8, 3)), jnp.float32)
  cond = jnp.asarray(r.standard_normal((b, T + K, 6)), jnp.float32)
  tokens = jnp.asarray(r.standard_normal((b, T + K, 5, 6)), jnp.float32)
  groups = jnp.broadcast_to(jnp.array([0] * T + list(range(1, K + 1))), (b, T + K))
  return x, cond, tokens, groups


@pytest.mark.parametrize("space_time", ["none", "all"])
def test_images_and_video_never_see_each_other(space_time):
  model = _model(space_time_attention=space_time)
  x, cond, tokens, groups = _inputs()
  t = jnp.array([3, 700])
  mask = jnp.ones(tokens.shape[:3], bool)
  # Random weights everywhere (cross-attention and the temporal blocks' outputs start at zero at init), so
  # that every path actually mixes frames.
  params = {"params": random_params(model, x, t, cond, text_tokens=tokens, text_mask=mask, frame_groups=groups)}
  run = jax.jit(lambda x, cond, tokens, groups: model.apply(params, x, t, cond, text_tokens=tokens,
                                                            text_mask=mask, frame_groups=groups))
  base = run(x, cond, tokens, groups)
  # Change image 1 (pixels, condition and caption): only image 1's output may move.
  x2 = x.at[:, T].add(1.0)
  cond2, tokens2 = cond.at[:, T].add(1.0), tokens.at[:, T].add(1.0)
  moved = run(x2, cond2, tokens2, groups)
  np.testing.assert_allclose(moved[:, :T], base[:, :T], atol=1e-5)
  np.testing.assert_allclose(moved[:, T + 1:], base[:, T + 1:], atol=1e-5)
  assert float(jnp.abs(moved[:, T] - base[:, T]).max()) > 1e-3
  # Change the video: the images do not move.
  moved = run(x.at[:, 0].add(1.0), cond, tokens, groups)
  np.testing.assert_allclose(moved[:, T:], base[:, T:], atol=1e-5)
  # Without the groups the image leaks into the video (so the checks above can fail).
  no_groups = jnp.zeros_like(groups)
  leak = run(x2, cond2, tokens2, no_groups) - run(x, cond, tokens, no_groups)
  assert float(jnp.abs(leak[:, :T]).max()) > 1e-3


def test_frame_groups_refuse_temporal_convs():
  model = _model(temporal_conv=3)
  x, cond, tokens, groups = _inputs()
  with pytest.raises(ValueError, match="temporal_conv"):
    model.init(jax.random.key(0), x, jnp.array([1, 2]), cond, text_tokens=tokens, frame_groups=groups)


def test_append_images_takes_frames_and_captions_of_other_videos():
  b, l, d = 4, 3, 2
  video = jnp.arange(b * T, dtype=jnp.uint8).reshape(b, T, 1, 1, 1) * jnp.ones((1, 1, 2, 2, 3), jnp.uint8)
  tokens = jnp.arange(b, dtype=jnp.float32).reshape(b, 1, 1) * jnp.ones((1, l, d))
  mask = jnp.arange(l)[None] < jnp.arange(1, b + 1)[:, None] % (l + 1)
  out = vdm.append_images({"video": video, "text_tokens": tokens, "text_mask": mask}, K, jax.random.key(0))
  assert out["video"].shape == (b, T + K, 2, 2, 3)
  assert out["text_tokens"].shape == (b, T + K, l, d) and out["text_mask"].shape == (b, T + K, l)
  np.testing.assert_array_equal(out["frame_groups"][0], [0] * T + [1, 2])
  np.testing.assert_array_equal(out["video"][:, :T], video)
  for i in range(b):
    for j in range(K):
      src = (i + 1 + j) % b
      frame = int(out["video"][i, T + j, 0, 0, 0])
      assert frame // T == src                                   # a frame of video i+1+j ...
      np.testing.assert_array_equal(out["text_tokens"][i, T + j], tokens[src])   # ... with its caption
      np.testing.assert_array_equal(out["text_mask"][i, T + j], mask[src])
    np.testing.assert_array_equal(out["text_tokens"][i, :T], jnp.broadcast_to(tokens[i], (T, l, d)))
  with pytest.raises(ValueError, match="larger"):
    vdm.append_images({"video": video, "text_tokens": tokens, "text_mask": mask}, b, jax.random.key(0))


# The joint train step on 8 devices equals 1 device: tests/test_train_vdm.py::test_sharded_step_equals_single_device.


class _FixedOutput:
  """A stand-in denoiser whose output is a fixed function of its input, so loss_fn's arithmetic is checked
  without compiling a network."""

  def apply(self, params, x, t, cond, **kwargs):
    return jnp.sin(3.0 * x) + params


def _loss_case(b, seed):
  """A random uint8 batch of b clips, a 100-step schedule and a plain x0 / L2 diffusion config."""
  import ml_collections
  from vidgen_jax.diffusion import schedules
  l, d = 3, 2
  r = np.random.default_rng(seed)
  batch = {"video": jnp.asarray(r.integers(0, 256, (b, T, 4, 4, 3)), jnp.uint8),
           "text_tokens": jnp.asarray(r.standard_normal((b, l, d)), jnp.float32),
           "text_mask": jnp.ones((b, l), bool)}
  cfg = ml_collections.ConfigDict(dict(prediction="x0", loss="l2", cfg_drop_prob=0.1, prob_focus_present=0.0))
  return batch, schedules.make_schedule(100), cfg


def test_temporal_loss_weight_adds_the_frame_deviation_of_the_video_frames_only():
  from vidgen_jax.diffusion import gaussian, losses
  b = 4
  batch, sched, cfg = _loss_case(b, seed=0)
  rng, params = jax.random.key(1), jnp.float32(0.25)
  for k in (0, K):
    base = vdm.loss_fn(params, _FixedOutput(), sched, cfg, batch, rng, num_images=k)
    cfg.temporal_loss_weight = 2.0
    weighted = vdm.loss_fn(params, _FixedOutput(), sched, cfg, batch, rng, num_images=k)
    del cfg["temporal_loss_weight"]
    # Rebuild what the model saw and its target, the same way loss_fn does, and add the term by hand.
    k_t, k_noise, _, _, k_images = jax.random.split(rng, 5)
    full = vdm.append_images(batch, k, k_images)
    x0 = vdm.to_model_space(full["video"])
    t = losses.sample_timesteps(k_t, b, 100)
    noise = jax.random.normal(k_noise, x0.shape)
    pred = _FixedOutput().apply(params, gaussian.q_sample(sched, x0, t, noise), t, None)
    mask = None if k == 0 else full["frame_groups"] == 0
    extra = losses.temporal_deviation_loss(pred, x0, "l2", frame_mask=mask).mean()
    np.testing.assert_allclose(weighted - base, 2.0 * extra, rtol=1e-5)
    assert extra > 0


def test_loss_snr_clip_weighs_each_sample_of_the_loss_by_its_clipped_snr():
  from vidgen_jax.diffusion import gaussian, losses
  b = 6
  batch, sched, cfg = _loss_case(b, seed=1)
  rng, params = jax.random.key(2), jnp.float32(0.25)
  base = vdm.loss_fn(params, _FixedOutput(), sched, cfg, batch, rng)
  cfg.loss_snr_clip = (1.0, 1.0)    # x0's own weight: unchanged
  np.testing.assert_allclose(vdm.loss_fn(params, _FixedOutput(), sched, cfg, batch, rng), base, rtol=1e-6)
  cfg.loss_snr_clip = (0.0, 5.0)
  weighted = vdm.loss_fn(params, _FixedOutput(), sched, cfg, batch, rng)
  k_t, k_noise = jax.random.split(rng, 5)[:2]
  x0 = vdm.to_model_space(batch["video"])
  t = losses.sample_timesteps(k_t, b, 100)
  pred = _FixedOutput().apply(params, gaussian.q_sample(sched, x0, t, jax.random.normal(k_noise, x0.shape)), t, None)
  ac = np.asarray(sched.alphas_cumprod)[np.asarray(t)]
  per_sample = np.square(np.asarray(pred) - np.asarray(x0)).reshape(b, -1).mean(-1)
  np.testing.assert_allclose(weighted, (np.clip(ac / (1 - ac), 0, 5) * per_sample).mean(), rtol=1e-5)
  assert not np.isclose(weighted, base)
