"""MaskGIT: schedules, training masks, losses, critic labels, iterative decoding, the network's null text."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.maskgit import decoding, losses, schedule
from vidgen_jax.models.maskgit import MaskGit, TokenCritic

V = 16


def test_schedules_and_counts():
  for s in schedule.SCHEDULES:
    g = schedule.gamma(jnp.linspace(0, 1, 11), s)
    assert float(g[0]) == 1.0 and abs(float(g[-1])) < 1e-6 and bool(jnp.all(jnp.diff(g) <= 0))
  assert int(schedule.num_masked(0.0, 10)) == 10 and int(schedule.num_masked(1.0, 10)) == 0
  assert int(schedule.num_masked(0.999, 10)) == 1
  with pytest.raises(ValueError):
    schedule.gamma(0.5, "exp")


def test_training_masks_respect_counts_and_padding():
  valid = jnp.arange(20)[None] < jnp.array([[20], [12], [5], [1]])
  mask = schedule.sample_train_mask(jax.random.key(0), 4, 20, valid=valid)
  assert not bool(jnp.any(mask & ~valid))
  assert bool(jnp.all(mask.sum(-1) >= 1))
  counts = []
  for seed in range(200):
    counts.append(int(schedule.sample_train_mask(jax.random.key(seed), 1, 20).sum()))
  # E[ceil(cos(r pi/2) 20)] for r ~ U(0,1) is about 20 * 2/pi + 0.5 = 13.2
  assert 11.5 < np.mean(counts) < 15


def test_losses_and_critic_labels():
  logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]]))
  targets = jnp.array([[0, 2]])
  loss, stats = losses.masked_token_loss(logits, targets, jnp.array([[False, True]]))
  np.testing.assert_allclose(loss, -np.log(0.1), rtol=1e-5)
  assert float(stats["masked_acc"]) == 0.0
  tokens = jnp.array([[3, 1, 2, 0]])
  mask = jnp.array([[True, True, False, False]])
  gen = jnp.full((1, 4, 4), -1e9).at[0, 0, 3].set(0.0).at[0, 1, 2].set(0.0).at[0, 2, 1].set(0.0)
  inputs, labels = losses.critic_inputs_and_labels(jax.random.key(0), tokens, mask, gen)
  np.testing.assert_array_equal(inputs, [[3, 2, 2, 0]])      # masked: sampled; unmasked: real
  np.testing.assert_array_equal(labels, [[False, True, False, False]])   # resampled-to-real is not fake
  assert float(losses.critic_loss(jnp.array([[0.0, 0.0]]), jnp.array([[True, False]]))) == pytest.approx(np.log(2))
  drops = losses.cfg_drop(jax.random.key(1), 10_000, 0.1)
  assert 0.08 < float(drops.mean()) < 0.12


def _target_logits(target):
  def logits_fn(tokens, null):
    return jnp.where(jax.nn.one_hot(target, V, dtype=bool), 5.0, 0.0) * jnp.ones((tokens.shape[0], 1, 1))
  return logits_fn


def test_decode_follows_the_schedule_and_keeps_primes():
  target = jnp.arange(24) % V
  tokens, history = decoding.maskgit_decode(_target_logits(target), jax.random.key(0), batch=2, num_tokens=24,
                                            steps=6, mask_id=V, temperature=0.0, return_history=True)
  np.testing.assert_array_equal(tokens, jnp.broadcast_to(target, (2, 24)))
  expected = [int(schedule.num_masked((i + 1) / 6, 24)) for i in range(6)]
  np.testing.assert_array_equal(history[:, 0], expected)
  prime = jnp.zeros((2, 24), jnp.int32).at[:, :4].set(7)
  prime_mask = jnp.arange(24)[None] < 4
  valid = jnp.arange(24)[None] < jnp.array([[24], [20]])
  out = decoding.maskgit_decode(_target_logits(target), jax.random.key(0), batch=2, num_tokens=24, steps=4,
                                mask_id=V, prime_tokens=prime, prime_mask=prime_mask, valid=valid)
  np.testing.assert_array_equal(out[:, :4], 7)
  np.testing.assert_array_equal(out[1, 20:], V)                       # padding stays padding
  np.testing.assert_array_equal(out[0, 4:], target[4:])


def test_decode_randomness_guidance_and_critic():
  flat = lambda tokens, null: jnp.zeros(tokens.shape + (V,))
  run = lambda seed, **kw: decoding.maskgit_decode(flat, jax.random.key(seed), batch=1, num_tokens=32, steps=4,
                                                   mask_id=V, temperature=1.0, **kw)
  assert not np.array_equal(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))
  cond = jnp.arange(V, dtype=jnp.float32)
  both = lambda tokens, null: jnp.where(null[:, None, None], 0.0, cond) * jnp.ones(tokens.shape + (1,))
  np.testing.assert_allclose(decoding.guided_logits(both, jnp.zeros((2, 3), jnp.int32), 3.0)[0, 0], 3 * cond)
  # A critic that calls the first half fake: after step 1 of 2 the re-masked tokens are exactly those.
  critic = lambda tokens: jnp.where(jnp.arange(tokens.shape[1]) < 16, 5.0, -5.0) * jnp.ones(tokens.shape)
  _, history = decoding.maskgit_decode(flat, jax.random.key(0), batch=1, num_tokens=32, steps=2, mask_id=V,
                                       critic_fn=critic, return_history=True)
  assert int(history[0, 0]) == int(schedule.num_masked(0.5, 32))
  step1 = jax.jit(lambda: decoding.maskgit_decode(flat, jax.random.key(0), batch=1, num_tokens=32, steps=2,
                                                  mask_id=V, critic_fn=critic))()
  assert step1.shape == (1, 32) and int(step1.max()) < V


def test_network_shapes_and_null_text():
  model = MaskGit(num_tokens=V, dim=16, depth=1, max_seq_len=64, heads=2, dim_head=8)
  tokens = jax.random.randint(jax.random.key(0), (2, 2 * 3 * 4), 0, V + 1)
  text = jax.random.normal(jax.random.key(1), (2, 5, 12))
  init, apply = (jax.jit(f, static_argnames="video_shape") for f in (model.init, model.apply))   # one compile
  variables = init(jax.random.key(2), tokens, text, video_shape=(2, 3, 4))                    # each, not op by op
  logits = apply(variables, tokens, text, video_shape=(2, 3, 4))
  assert logits.shape == (2, 24, V)
  null = jnp.array([True, True])
  a = apply(variables, tokens, text, null=null, video_shape=(2, 3, 4))
  b = apply(variables, tokens, text * 3.0 + 1.0, null=null, video_shape=(2, 3, 4))
  np.testing.assert_allclose(a, b, atol=1e-5)                        # the null text ignores the prompt
  assert float(jnp.abs(a - logits).max()) > 1e-4
  critic = TokenCritic(num_tokens=V, dim=16, depth=1, max_seq_len=64, heads=2, dim_head=8)
  init, apply_critic = (jax.jit(f, static_argnames="video_shape") for f in (critic.init, critic.apply))
  cv = init(jax.random.key(3), tokens, text, video_shape=(2, 3, 4))
  assert apply_critic(cv, tokens, text, video_shape=(2, 3, 4)).shape == (2, 24)
  with pytest.raises(ValueError, match="video_shape"):
    apply(variables, tokens, text, video_shape=(2, 3, 3))


def test_bfloat16_compute_stays_close_to_float32_with_float32_logits():
  kw = dict(num_tokens=V, dim=16, depth=2, max_seq_len=64, heads=2, dim_head=8)
  tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, V + 1)
  text = jax.random.normal(jax.random.key(1), (2, 5, 12))
  for cls in (MaskGit, TokenCritic):
    variables = jax.jit(cls(**kw).init, static_argnames="video_shape")(jax.random.key(2), tokens, text,
                                                                       video_shape=(2, 3, 4))
    ref, out = (jax.jit(cls(**kw, dtype=dtype).apply, static_argnames="video_shape")(variables, tokens, text,
                                                                                     video_shape=(2, 3, 4))
                for dtype in (jnp.float32, jnp.bfloat16))
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert 0 < rel < 0.05, (cls.__name__, rel)
