"""Tests of the training side of vidgen_jax.diffusion: which noise levels each sample and frame gets (high-noise
draws, per-frame levels, clean prefixes, reversal clips, expert windows), what stays out of the loss, and the
temporal loss term."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax import diffusion


def test_sample_timesteps_uniform_by_default_and_high_noise_mass_when_asked():
  from vidgen_jax.diffusion import losses
  key = jax.random.key(3)
  np.testing.assert_array_equal(losses.sample_timesteps(key, 64, 1000),
                                jax.random.randint(key, (64,), 0, 1000))   # the reference's draw, bit-exact
  t = np.asarray(losses.sample_timesteps(key, 20_000, 1000, high_noise_prob=0.5, high_noise_from=0.8))
  assert t.min() >= 0 and t.max() < 1000
  # 0.5 of the samples in [800, 1000) plus 0.2 of the other half: 0.6
  assert abs((t >= 800).mean() - 0.6) < 0.02
  assert abs((t < 400).mean() - 0.2) < 0.02
  t = np.asarray(losses.sample_timesteps(key, 1000, 1000, high_noise_prob=1.0, high_noise_from=0.9))
  assert t.min() >= 900
  with pytest.raises(ValueError, match="high_noise_prob"):
    losses.sample_timesteps(key, 4, 1000, high_noise_prob=1.5)
  with pytest.raises(ValueError, match="high_noise_from"):
    losses.sample_timesteps(key, 4, 1000, high_noise_prob=0.5, high_noise_from=1.0)


def test_frame_timesteps_mix_shared_and_independent_per_frame_levels():
  from vidgen_jax.diffusion import losses
  key = jax.random.key(5)
  t = jnp.arange(6) * 100
  np.testing.assert_array_equal(losses.frame_timesteps(key, t, 4, 1000, 0.0), np.repeat(t[:, None], 4, 1))
  t = jax.random.randint(key, (4000,), 0, 1000)
  ft = np.asarray(losses.frame_timesteps(jax.random.key(6), t, 8, 1000, 0.5))
  assert ft.shape == (4000, 8) and ft.min() >= 0 and ft.max() < 1000
  shared = (ft == ft[:, :1]).all(axis=1)
  assert abs(shared.mean() - 0.5) < 0.03                       # half the clips keep one level ...
  np.testing.assert_array_equal(ft[shared, 0], np.asarray(t)[shared])   # ... the clip's own t
  assert np.std(ft[~shared], axis=1).mean() > 200              # the rest: independent uniform levels
  with pytest.raises(ValueError, match="frame_noise_prob"):
    losses.frame_timesteps(key, t, 8, 1000, 1.5)


def test_clean_prefixes_hand_the_model_what_prediction_by_clean_does():
  """A clean_prefix_prob share of the clips gets its first k frames (1 <= k <= frames/2) at level 0 and the
  others at the clip's own t, as prediction by 'clean' does; the rest and appended images keep frame_t."""
  from vidgen_jax.diffusion import losses
  key = jax.random.key(8)
  t = jax.random.randint(key, (4000,), 1, 1000)
  frame_t = jnp.maximum(losses.frame_timesteps(jax.random.key(9), t, 10, 1000, 0.5), 1)   # 0 marks a prefix
  np.testing.assert_array_equal(losses.clean_prefix_lengths(key, 4000, 0.0, 8), 0)
  known = np.asarray(losses.clean_prefix_lengths(key, 4000, 0.5, video_frames=8))
  out = np.asarray(losses.known_prefix_timesteps(t, frame_t, known, video_frames=8))
  t, frame_t = np.asarray(t), np.asarray(frame_t)
  prefixed = out[:, 0] == 0
  np.testing.assert_array_equal(prefixed, known > 0)
  assert abs(prefixed.mean() - 0.5) < 0.03
  np.testing.assert_array_equal(out[~prefixed], frame_t[~prefixed])
  np.testing.assert_array_equal(out[:, 8:], frame_t[:, 8:])                 # the 2 appended images
  np.testing.assert_array_equal((out[prefixed, :8] == 0).sum(axis=1), known[prefixed])
  assert sorted(set(known[prefixed])) == [1, 2, 3, 4]                       # k uniform over [1, 8 // 2]
  video = out[prefixed, :8]
  clean_first = np.asarray(losses.known_prefix_mask(known[prefixed], 8))
  np.testing.assert_array_equal(video[clean_first], 0)                       # a prefix, not scattered frames
  np.testing.assert_array_equal(np.where(clean_first, t[prefixed, None], video), t[prefixed, None] + 0 * video)
  with pytest.raises(ValueError, match="clean_prefix_prob"):
    losses.clean_prefix_lengths(key, 4, 1.5, 8)
  with pytest.raises(ValueError, match="at least 2 frames"):
    losses.clean_prefix_lengths(key, 4, 0.5, video_frames=1)


def test_known_prefix_timesteps_give_each_sample_its_own_clean_frames():
  """known[i] = k > 0: sample i's first k frames at level 0 and its other video frames at t[i]; k = 0 and the
  appended images keep frame_t."""
  from vidgen_jax.diffusion import losses
  t = jnp.array([500, 600, 700])
  frame_t = jnp.arange(30).reshape(3, 10) + 1
  out = np.asarray(losses.known_prefix_timesteps(t, frame_t, jnp.array([0, 2, 4]), video_frames=8))
  np.testing.assert_array_equal(out[0], frame_t[0])
  np.testing.assert_array_equal(out[1], [0, 0] + [600] * 6 + [19, 20])
  np.testing.assert_array_equal(out[2], [0] * 4 + [700] * 4 + [29, 30])
  np.testing.assert_array_equal(losses.known_prefix_mask(jnp.array([0, 2]), 3), [[0, 0, 0], [1, 1, 0]])


def test_t_range_trains_an_expert_on_its_noise_levels_only():
  """diffusion.t_range (lo, hi): every clip's level, or its noisiest frame's with per-frame levels (the one an
  expert split decides by), lies in [lo T, hi T), rounded as the expert switch is; its other frames lie
  anywhere below hi T. The loss hands the model only such levels; () is the reference's draw, bit-exact."""
  import flax.linen as nn
  import ml_collections
  from vidgen_jax.diffusion import experts, losses
  from vidgen_jax.train import vdm
  key = jax.random.key(7)
  assert losses.timestep_window(1000, ()) == (0, 1000)
  assert losses.timestep_window(1000, (0, 0.5)) == (0, experts.switch_index(0.5, 1000)) == (0, 500)
  assert losses.timestep_window(1000, (0.25, 1)) == (250, 1000)
  t = np.asarray(losses.sample_timesteps(key, 8000, 1000, t_range=(0.25, 0.5)))
  assert t.min() == 250 and t.max() == 499 and abs(t.mean() - 374.5) < 3      # uniform over [250, 500)
  np.testing.assert_array_equal(losses.sample_timesteps(key, 64, 1000, t_range=()),
                                losses.sample_timesteps(key, 64, 1000))
  ft = np.asarray(losses.frame_timesteps(key, jnp.asarray(t[:2000]), 8, 1000, 1.0, (0.25, 0.5)))
  assert ft.max(axis=1).min() >= 250 and ft.max() == 499 and ft.min() < 10     # the noisiest frame inside
  assert abs((ft < 250).mean() - 7 / 8 * 0.5) < 0.02                           # the others over [0, hi)
  low = np.asarray(losses.frame_timesteps(key, jnp.asarray(t[:2000]) - 250, 8, 1000, 1.0, (0, 0.5)))
  assert low.max() == 499 and low.min() == 0
  np.testing.assert_array_equal(losses.frame_timesteps(key, jnp.asarray(t[:64]), 8, 1000, 0.5, ()),
                                losses.frame_timesteps(key, jnp.asarray(t[:64]), 8, 1000, 0.5))
  for bad in ((0.5, 0.5), (0.6, 0.4), (-0.1, 0.5), (0, 1.5), (0.5,), ("a", 1)):
    with pytest.raises(ValueError, match="t_range"):
      losses.timestep_window(1000, bad)
  with pytest.raises(ValueError, match="not both"):
    losses.sample_timesteps(key, 4, 1000, high_noise_prob=0.5, t_range=(0, 0.5))

  seen = []

  class Recorder(nn.Module):   # stands in for the U-Net: records the levels it is handed
    @nn.compact
    def __call__(self, x, t, cond, **unused):
      seen.append(np.asarray(t))
      return x * self.param("scale", nn.initializers.ones, ())

  cfg = ml_collections.ConfigDict(dict(prediction="x0", loss="l2", cfg_drop_prob=0.0, prob_focus_present=0.0,
                                       frame_noise_prob=0.5, t_range=(0.5, 1.0)))
  batch = {"video": np.zeros((64, 3, 4, 4, 3), np.uint8), "text_tokens": np.ones((64, 2, 4), np.float32),
           "text_mask": np.ones((64, 2), bool)}
  sched = diffusion.make_schedule(1000, "cosine")
  vdm.loss_fn({"params": {"scale": jnp.ones(())}}, Recorder(), sched, cfg, batch, jax.random.key(1))
  levels = seen[-1]
  assert levels.shape == (64, 3) and levels.max(axis=1).min() >= 500 and levels.max() < 1000
  assert not (levels == levels[:, :1]).all() and levels.min() < 500   # per-frame levels, noisiest inside
  cfg.clean_prefix_prob = 1.0      # every clip: its first frame clean, the others at one level inside
  vdm.loss_fn({"params": {"scale": jnp.ones(())}}, Recorder(), sched, cfg, batch, jax.random.key(1))
  levels = seen[-1]
  assert (levels[:, 0] == 0).all() and (levels[:, 1] == levels[:, 2]).all() and levels[:, 1].min() >= 500
  cfg.clean_prefix_prob = 0.0      # reversal clips: the frames before each one's turn clean, whatever else
  turn = np.arange(64) % 3         # 0 (an ordinary clip), 1 or 2
  vdm.loss_fn({"params": {"scale": jnp.ones(())}}, Recorder(), sched, cfg, dict(batch, turn_frame=turn),
              jax.random.key(1))
  levels, before = seen[-1], np.arange(3)[None] < turn[:, None]
  turned = turn > 0
  assert (levels[before] == 0).all()
  np.testing.assert_array_equal(levels[turned][~before[turned]],   # the rest of a turned clip at its level
                                np.repeat(levels[turned, 2], 3 - turn[turned]))
  assert levels[turned, 2].min() >= 500
  assert not (levels[~turned] == levels[~turned, :1]).all()   # ordinary clips keep their per-frame levels


def test_frames_given_as_context_stay_out_of_the_loss():
  """Frames given clean (a reversal clip's before its turn, a clean prefix) are conditioning, not targets:
  the loss does not change whatever the model outputs on them, even under an SNR weighting (whose level-0
  weight, ~1e4 here, would otherwise let them dominate), and does change on the frames after them."""
  import flax.linen as nn
  import ml_collections
  from vidgen_jax.train import vdm

  class FirstFrameOff(nn.Module):   # predicts x0 exactly except on frame 0, where it is off by `off`
    off: float

    @nn.compact
    def __call__(self, x, t, cond, **unused):
      self.param("unused", nn.initializers.zeros, ())
      return jnp.zeros_like(x).at[:, 0].add(self.off) + self.variables["params"]["unused"]

  cfg = ml_collections.ConfigDict(dict(prediction="x0", loss="l2", cfg_drop_prob=0.0, prob_focus_present=0.0,
                                       frame_noise_prob=0.0, loss_snr_clip=(1, 1e5)))
  batch = {"video": np.full((8, 3, 4, 4, 3), 127, np.uint8), "text_tokens": np.ones((8, 2, 4), np.float32),
           "text_mask": np.ones((8, 2), bool), "turn_frame": np.ones(8, np.int32)}   # video is ~0 in model space
  sched = diffusion.make_schedule(1000, "cosine")
  loss = lambda off, b: float(vdm.loss_fn({"params": {"unused": jnp.zeros(())}}, FirstFrameOff(off), sched, cfg,
                                          b, jax.random.key(0)))
  assert loss(5.0, batch) == loss(0.0, batch)                         # frame 0 is context in every clip
  plain = dict(batch, turn_frame=np.zeros(8, np.int32))
  assert loss(5.0, plain) > loss(0.0, plain) + 1.0                    # and a target in ordinary clips
  cfg.clean_prefix_prob = 1.0                                          # a clean prefix: at least frame 0
  assert loss(5.0, plain) == loss(0.0, plain)


def test_temporal_deviation_loss_weighs_only_the_error_that_changes_over_frames():
  from vidgen_jax.diffusion import losses
  b, f = 3, 5
  target = jax.random.normal(jax.random.key(0), (b, f, 4, 4, 3))
  static = jax.random.normal(jax.random.key(1), (b, 1, 4, 4, 3))
  moving = jax.random.normal(jax.random.key(2), (b, f, 4, 4, 3))
  # An error that is the same in every frame (appearance) costs nothing ...
  np.testing.assert_allclose(losses.temporal_deviation_loss(target + static, target), np.zeros(b), atol=1e-6)
  # ... one that changes over frames costs its deviation from its frame mean, for l2 and l1.
  dev = np.asarray(moving - moving.mean(axis=1, keepdims=True))
  np.testing.assert_allclose(losses.temporal_deviation_loss(target + static + moving, target, "l2"),
                             (dev ** 2).reshape(b, -1).mean(-1), rtol=1e-5)
  np.testing.assert_allclose(losses.temporal_deviation_loss(target + moving, target, "l1"),
                             np.abs(dev).reshape(b, -1).mean(-1), rtol=1e-5)
  # With a frame mask (a joint image+video clip) the mean and the loss cover the video frames only: what the
  # masked frames hold does not matter.
  mask = jnp.array([[1, 1, 1, 0, 0]] * b, bool)
  junk = moving.at[:, 3:].set(100.0)
  got = losses.temporal_deviation_loss(target + junk, target, "l2", frame_mask=mask)
  kept = np.asarray(moving[:, :3] - moving[:, :3].mean(axis=1, keepdims=True))
  np.testing.assert_allclose(got, (kept ** 2).reshape(b, -1).sum(-1) / (f * 4 * 4 * 3), rtol=1e-5)
