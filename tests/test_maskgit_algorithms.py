"""MaskGIT / Token-Critic algorithms with hand-made networks: schedules, training masks, losses, critic
examples, condition dropout, and decoding (schedule, primes, padding, guidance, randomness, critics, jit)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.maskgit import decoding, losses, schedule

V = 16          # vocabulary; mask_id = V
MASK = V


# ----------------------------------------------------------------------------------------------- schedules

def test_schedule_endpoints_and_monotonicity():
  r = jnp.linspace(0.0, 1.0, 101)
  for name in schedule.SCHEDULES:
    g = np.asarray(schedule.gamma(r, name))
    assert g[0] == pytest.approx(1.0) and abs(g[-1]) < 1e-6
    assert np.all(np.diff(g) <= 1e-7), name
  np.testing.assert_allclose(schedule.gamma(0.5, "cosine"), math.cos(math.pi / 4), rtol=1e-6)
  np.testing.assert_allclose(schedule.gamma(0.5, "square"), 0.75, rtol=1e-6)
  np.testing.assert_allclose(schedule.gamma(0.3, lambda x: 1.0 - x**3), 1.0 - 0.027, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown"):
    schedule.gamma(0.5, "exp")


def test_num_masked_counts():
  # cos(π/2·i/8)·16 = 16, 15.69, 14.78, 13.30, 11.31, 8.89, 6.12, 3.12, 0
  got = [int(schedule.num_masked(i / 8, 16, "cosine")) for i in range(9)]
  assert got == [16, 16, 15, 14, 12, 9, 7, 4, 0]
  # Exact products (0.8·10 = 8) must not round up to 9 through float error.
  assert [int(schedule.num_masked(i / 5, 10, "linear")) for i in range(6)] == [10, 8, 6, 4, 2, 0]
  assert int(schedule.num_masked(0.5, 10, "square")) == 8                    # ceil(7.5)
  assert int(schedule.num_masked(0.9999, 1000)) == 1                          # >= 1 before the end
  assert int(schedule.num_masked(0.5, 0)) == 0                                # nothing to mask
  np.testing.assert_array_equal(schedule.num_masked(0.5, jnp.array([10, 3, 0]), "linear"), [5, 2, 0])


def test_train_masks_exact_counts_and_padding():
  lengths = jnp.array([20, 12, 5, 1, 0])
  valid = jnp.arange(20)[None] < lengths[:, None]
  quarter = lambda r: jnp.where(r < 1, 0.25, 0.0)                            # constant ratio: exact counts
  for seed in range(5):
    mask = schedule.sample_train_mask(jax.random.key(seed), 5, 20, quarter, valid=valid)
    assert not bool(jnp.any(mask & ~valid))
    np.testing.assert_array_equal(mask.sum(-1), [5, 3, 2, 1, 0])              # ceil(n/4), >= 1 if n > 0
  # Chosen uniformly: every valid position is masked about equally often.
  mask = schedule.sample_train_mask(jax.random.key(7), 4000, 12, quarter)
  freq = np.asarray(mask.mean(0))
  np.testing.assert_allclose(freq, 0.25, atol=0.035)
  # The count follows the schedule of r ~ U(0, 1): linear gives ceil((1 − r)·20), uniform on 1..20.
  counts = np.asarray(schedule.sample_train_mask(jax.random.key(1), 4000, 20, "linear").sum(-1))
  assert counts.min() >= 1 and counts.max() <= 20
  assert abs(counts.mean() - 10.5) < 0.35
  hist = np.bincount(counts, minlength=21)[1:] / len(counts)
  np.testing.assert_allclose(hist, 1 / 20, atol=0.02)
  # Cosine: E[ceil(cos(rπ/2)·20)] ≈ 20·2/π + 0.5.
  counts = np.asarray(schedule.sample_train_mask(jax.random.key(2), 4000, 20).sum(-1))
  assert abs(counts.mean() - (40 / math.pi + 0.5)) < 0.4


# ---------------------------------------------------------------------------------------------------- losses

def test_masked_token_loss_equals_hand_computed_cross_entropy():
  logits = jnp.array([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0], [0.0, 3.0, 0.0]]])
  targets = jnp.array([[0, 2, 1, 0]])
  mask = jnp.array([[True, True, False, True]])
  valid = jnp.array([[True, True, True, False]])                             # the last one is padding
  loss, stats = losses.masked_token_loss(logits, targets, mask, valid)
  lp = np.asarray(jax.nn.log_softmax(logits, -1))[0]
  expected = -(lp[0, 0] + lp[1, 2]) / 2
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(stats["masked_ce"], expected, rtol=1e-6)
  assert float(stats["masked_acc"]) == pytest.approx(1.0)                    # argmax 0 and 2: both right
  assert float(stats["masked_frac"]) == pytest.approx(2 / 3)
  loss_all, _ = losses.masked_token_loss(logits, targets, mask)              # valid=None: the 4th counts
  np.testing.assert_allclose(loss_all, -(lp[0, 0] + lp[1, 2] + lp[3, 0]) / 3, rtol=1e-6)
  none, _ = losses.masked_token_loss(logits, targets, jnp.zeros_like(mask))
  assert float(none) == 0.0


def _one_hot_logits(ids, vocab):
  return jnp.where(jax.nn.one_hot(ids, vocab, dtype=bool), 0.0, -1e9)


def test_critic_labels_mark_exactly_replaced_and_different_tokens():
  tokens = jnp.array([[3, 1, 2, 0, 5]])
  mask = jnp.array([[True, True, False, False, True]])
  # The generator (deterministic) predicts: 3 (= real), 2 (≠ real), 1 (≠ real, but unmasked), 0, 5 (= real).
  gen = _one_hot_logits(jnp.array([[3, 2, 1, 0, 5]]), 8)
  inputs, labels = losses.critic_inputs_and_labels(jax.random.key(0), tokens, mask, gen)
  np.testing.assert_array_equal(inputs, [[3, 2, 2, 0, 5]])                  # masked: sampled; else real
  # Resampled-to-real is 0; the unmasked position where the generator disagrees is 0 (the reference says 1).
  np.testing.assert_array_equal(labels, [[False, True, False, False, False]])
  # With a random generator: labels == masked & changed, and some masked positions come back unchanged.
  k1, k2 = jax.random.split(jax.random.key(1))
  tokens = jax.random.randint(k1, (8, 64), 0, 4)
  mask = jax.random.bernoulli(k2, 0.5, (8, 64))
  inputs, labels = losses.critic_inputs_and_labels(jax.random.key(2), tokens, mask, jnp.zeros((8, 64, 4)))
  np.testing.assert_array_equal(labels, mask & (inputs != tokens))
  np.testing.assert_array_equal(jnp.where(mask, tokens, inputs), tokens)
  assert 0 < int((mask & ~labels).sum()) < int(mask.sum())
  # The mask token is never sampled even when the generator's vocabulary has a row for it.
  gen = jnp.zeros((1, 64, V + 1)).at[..., MASK].set(50.0)
  inputs, _ = losses.critic_inputs_and_labels(jax.random.key(3), jnp.zeros((1, 64), jnp.int32),
                                              jnp.ones((1, 64), bool), gen, mask_id=MASK)
  assert int(inputs.max()) < MASK


def test_critic_targets_and_inputs_runs_the_generator_on_the_masked_tokens():
  tokens = jnp.tile(jnp.arange(12) % 5, (3, 1))
  valid = jnp.arange(12)[None] < jnp.array([[12], [9], [4]])
  seen = {}

  def generator(masked_tokens):
    seen["x"] = masked_tokens
    return _one_hot_logits((tokens + 1) % 5, 5)                             # always a different token

  ex = losses.critic_targets_and_inputs(jax.random.key(0), tokens, generator, mask_id=MASK, valid=valid)
  np.testing.assert_array_equal(seen["x"], jnp.where(ex.mask, MASK, tokens))
  assert not bool(jnp.any(ex.mask & ~valid)) and bool(jnp.all(ex.mask.sum(-1) >= 1))
  np.testing.assert_array_equal(ex.labels, ex.mask)                          # every masked token replaced
  np.testing.assert_array_equal(jnp.where(ex.mask, tokens, ex.inputs), tokens)
  same = losses.critic_targets_and_inputs(jax.random.key(0), tokens, lambda x: _one_hot_logits(tokens, 5),
                                          mask_id=MASK, valid=valid)
  assert not bool(same.labels.any())                                         # resampled to the real ones


def test_critic_loss_and_condition_dropout():
  logits = jnp.array([[0.0, 2.0, -1.0]])
  labels = jnp.array([[True, False, True]])
  valid = jnp.array([[True, True, False]])
  bce = lambda x, y: -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
  expected = (bce(0.0, 1) + bce(2.0, 0)) / 2
  assert float(losses.critic_loss(logits, labels, valid)) == pytest.approx(expected, rel=1e-5)
  assert float(losses.critic_loss(logits, labels)) == pytest.approx((expected * 2 + bce(-1.0, 1)) / 3, rel=1e-5)
  drops = losses.cfg_drop(jax.random.key(1), 20_000, 0.25)
  assert drops.dtype == jnp.bool_ and 0.235 < float(drops.mean()) < 0.265   # it really drops
  assert not bool(losses.cfg_drop(jax.random.key(1), 100, 0.0).any())
  assert bool(losses.cfg_drop(jax.random.key(1), 100, 1.0).all())
  with pytest.raises(ValueError):
    losses.cfg_drop(jax.random.key(1), 4, 1.5)


# -------------------------------------------------------------------------------------------------- decoding

def _target_fn(target, vocab=V):
  """A generator that puts all its mass on `target` (N,) at every position, whatever it sees."""
  def logits_fn(tokens, null):
    return jnp.broadcast_to(_one_hot_logits(target, vocab), tokens.shape + (vocab,))
  return logits_fn


def test_decode_reproduces_the_target_and_follows_the_schedule():
  target = (jnp.arange(24) * 7) % V
  for name, steps in (("cosine", 6), ("linear", 5), ("square", 8)):
    tokens, history, states = decoding.maskgit_decode(
        _target_fn(target), jax.random.key(0), batch=2, num_tokens=24, steps=steps, mask_id=MASK, schedule=name,
        temperature=1.0, return_history=True, return_states=True)
    np.testing.assert_array_equal(tokens, jnp.broadcast_to(target, (2, 24)))
    expected = [int(schedule.num_masked((i + 1) / steps, 24, name)) for i in range(steps)]
    assert expected[-1] == 0
    np.testing.assert_array_equal(history, np.broadcast_to(np.array(expected)[:, None], (steps, 2)))
    np.testing.assert_array_equal((states == MASK).sum(-1), history)
    # Whatever is unmasked is final: every state agrees with the target outside its masked positions.
    assert bool(jnp.all((states == MASK) | (states == target)))


def test_decode_counts_seen_by_the_network():
  """The network itself sees num_masked(i/steps) masked tokens at step i (recorded with jax.debug)."""
  seen = []

  def logits_fn(tokens, null):
    jax.debug.callback(lambda c: seen.append(int(c)), (tokens == MASK).sum(), ordered=True)
    return jnp.zeros(tokens.shape + (V,))

  steps, n = 7, 30
  jax.jit(lambda rng: decoding.maskgit_decode(logits_fn, rng, batch=1, num_tokens=n, steps=steps,
                                              mask_id=MASK))(jax.random.key(0)).block_until_ready()
  jax.effects_barrier()
  assert seen == [int(schedule.num_masked(i / steps, n)) for i in range(steps)]


def test_prime_tokens_never_change_and_padding_stays_padding():
  target = jnp.arange(24) % V
  prime = jnp.zeros((2, 24), jnp.int32).at[:, :6].set(jnp.array([[9], [11]]))
  prime_mask = jnp.arange(24) < 6
  valid = jnp.arange(24)[None] < jnp.array([[24], [20]])
  seen = []

  def logits_fn(tokens, null):
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), tokens, ordered=True)
    return _target_fn(target)(tokens, null)

  critic = lambda tokens: jnp.zeros(tokens.shape)                            # even a critic cannot move them
  for kw in ({}, {"critic_fn": critic}, {"self_critic": True}):
    seen.clear()
    out, history, states = decoding.maskgit_decode(
        logits_fn, jax.random.key(3), batch=2, num_tokens=24, steps=5, mask_id=MASK, prime_tokens=prime,
        prime_mask=prime_mask, valid=valid, pad_id=-1, return_history=True, return_states=True, **kw)
    jax.effects_barrier()
    np.testing.assert_array_equal(states[:, :, :6], jnp.broadcast_to(prime[:, :6], (5, 2, 6)))
    np.testing.assert_array_equal(states[:, 1, 20:], -1)                      # padding: pad_id throughout
    np.testing.assert_array_equal(out[0, 6:], target[6:])
    np.testing.assert_array_equal(out[1, 6:20], target[6:20])
    np.testing.assert_array_equal(seen[0][1], jnp.concatenate([prime[1, :6], jnp.full((14,), MASK),
                                                                     jnp.full((4,), -1)]))
    free = np.array([18, 14])
    expected = np.array([[int(schedule.num_masked((i + 1) / 5, f)) for f in free] for i in range(5)])
    np.testing.assert_array_equal(history, expected)                          # schedule over the free ones


def test_guidance_combines_as_null_plus_scale_times_difference():
  cond = jnp.array([1.0, 1.2, -3.0])
  null = jnp.array([0.0, 1.5, -3.0])
  calls = []

  def logits_fn(tokens, is_null):
    calls.append(tokens.shape[0])
    return jnp.where(is_null[:, None, None], null, cond) * jnp.ones(tokens.shape + (1,))

  tokens = jnp.zeros((2, 4), jnp.int32)
  for s in (3.0, 0.5, -1.0):
    np.testing.assert_allclose(decoding.guided_logits(logits_fn, tokens, s), jnp.broadcast_to(null + s * (cond - null),
                                                                                             (2, 4, 3)), rtol=1e-6)
  assert calls[-1] == 4                                                      # one doubled batch
  np.testing.assert_allclose(decoding.guided_logits(logits_fn, tokens, 1.0)[0, 0], cond)
  np.testing.assert_allclose(decoding.guided_logits(logits_fn, tokens, 0)[0, 0], null)
  assert calls[-2:] == [2, 2]
  traced = jax.jit(lambda s: decoding.guided_logits(logits_fn, tokens, s))(jnp.float32(3.0))
  np.testing.assert_allclose(traced[0, 0], null + 3.0 * (cond - null), rtol=1e-6)
  # Through decoding (argmax sampling): cond alone picks 1, guidance at 3 picks 0, the null pass picks 1.
  run = lambda s: decoding.maskgit_decode(logits_fn, jax.random.key(0), batch=2, num_tokens=4, steps=2,
                                          mask_id=3, temperature=0.0, cond_scale=s)
  np.testing.assert_array_equal(run(1.0), 1)
  np.testing.assert_array_equal(run(3.0), 0)
  np.testing.assert_array_equal(run(0.0), 1)


def test_randomness_topk_and_mask_exclusion():
  flat = lambda tokens, null: jnp.zeros(tokens.shape + (V,))
  run = lambda seed, **kw: decoding.maskgit_decode(flat, jax.random.key(seed), batch=2, num_tokens=32, steps=4,
                                                   mask_id=MASK, **kw)
  a, b, a2 = run(0), run(1), run(0)
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, a2)
  assert not np.array_equal(a[0], a[1])                                      # rows are independent
  assert int(a.max()) < MASK and int(a.min()) >= 0
  # Temperature 0: argmax everywhere, whatever the rng.
  np.testing.assert_array_equal(run(5, temperature=0.0), 0)
  # Top-k: only the k best tokens of a nearly flat distribution are ever drawn.
  ramp = lambda tokens, null: jnp.broadcast_to(-0.01 * jnp.arange(V, dtype=jnp.float32), tokens.shape + (V,))
  top = lambda k, seed: decoding.maskgit_decode(ramp, jax.random.key(seed), batch=4, num_tokens=32, steps=4,
                                                mask_id=MASK, topk_filter=k, temperature=3.0)
  np.testing.assert_array_equal(top(1, 0), 0)
  t3 = np.asarray(top(3, 0))
  assert set(np.unique(t3)) == {0, 1, 2}
  # A vocabulary that includes the mask row: the mask token is never produced.
  with_mask = lambda tokens, null: jnp.zeros(tokens.shape + (V + 1,)).at[..., MASK].set(50.0)
  out = decoding.maskgit_decode(with_mask, jax.random.key(0), batch=1, num_tokens=16, steps=3, mask_id=MASK)
  assert int(out.max()) < MASK


def test_critic_remasks_the_positions_it_scores_worst():
  n, steps = 32, 2
  score = jnp.asarray(np.random.default_rng(0).permutation(n), jnp.float32)  # position p "fakeness"
  critic = lambda tokens: jnp.broadcast_to(score, tokens.shape)
  flat = lambda tokens, null: jnp.zeros(tokens.shape + (V,))
  _, states = decoding.maskgit_decode(flat, jax.random.key(0), batch=1, num_tokens=n, steps=steps, mask_id=MASK,
                                      critic_fn=critic, choice_temperature=0.0, return_states=True)
  k = int(schedule.num_masked(0.5, n))
  worst = set(np.argsort(-np.asarray(score))[:k].tolist())
  assert set(np.flatnonzero(np.asarray(states[0, 0]) == MASK).tolist()) == worst
  assert int((states[-1] == MASK).sum()) == 0
  # With annealed noise the choice is no longer exactly the k worst, but the count still is k.
  _, hist = decoding.maskgit_decode(flat, jax.random.key(0), batch=1, num_tokens=n, steps=steps, mask_id=MASK,
                                    critic_fn=critic, choice_temperature=50.0, return_history=True)
  assert int(hist[0, 0]) == k


def _wrong_first_generator(target, wrong):
  """Predicts `wrong` everywhere while nothing is decoded yet, then `target`."""
  def logits_fn(tokens, null):
    all_masked = jnp.all(tokens == MASK, axis=-1)[:, None]
    return _one_hot_logits(jnp.where(all_masked, wrong, target), V)
  return logits_fn


def test_token_critic_sends_back_tokens_decoded_at_earlier_steps():
  n, steps = 16, 3
  target = jnp.arange(n) % 8
  base = 0.01 * jnp.arange(n, dtype=jnp.float32)
  critic = lambda tokens: jnp.where(tokens != target, 100.0, 0.0) + base     # wrong tokens are fake
  gen = _wrong_first_generator(target, 15)
  kw = dict(batch=1, num_tokens=n, steps=steps, mask_id=MASK, temperature=0.0, choice_temperature=0.0,
            return_states=True)
  out, states = decoding.maskgit_decode(gen, jax.random.key(0), critic_fn=critic, **kw)
  k0 = int(schedule.num_masked(1 / 3, n))                                    # 14: two wrong tokens kept
  kept0 = np.flatnonzero(np.asarray(states[0, 0]) != MASK)
  assert len(kept0) == n - k0 and np.all(np.asarray(states[0, 0])[kept0] == 15)
  assert np.all(np.asarray(states[1, 0])[kept0] == MASK)                     # the critic sent them back
  np.testing.assert_array_equal(out[0], target)
  plain, _ = decoding.maskgit_decode(gen, jax.random.key(0), **kw)          # MaskGIT keeps decoded tokens
  assert int((plain[0] == 15).sum()) == n - k0


def test_self_critic_uses_the_generators_own_probabilities():
  n, steps = 16, 3
  target = jnp.arange(n) % 8

  def gen(tokens, null):
    # First step: unsure (p(target) ≈ 0.1–0.14, rising with position); afterwards: certain.
    first = jnp.all(tokens == MASK, axis=-1)[:, None, None]
    unsure = jax.nn.one_hot(target, V) * (0.5 + 0.01 * jnp.arange(n))[:, None]
    return jnp.where(first, unsure, 30.0 * jax.nn.one_hot(target, V))

  kw = dict(batch=1, num_tokens=n, steps=steps, mask_id=MASK, temperature=0.0, choice_temperature=0.0,
            return_states=True)
  out, states = decoding.maskgit_decode(gen, jax.random.key(0), self_critic=True, **kw)
  kept0 = np.flatnonzero(np.asarray(states[0, 0]) != MASK)
  np.testing.assert_array_equal(kept0, [14, 15])                            # the most confident at step 0
  assert np.all(np.asarray(states[1, 0])[kept0] == MASK)                     # now the least: re-masked
  np.testing.assert_array_equal(out[0], target)
  _, plain = decoding.maskgit_decode(gen, jax.random.key(0), **kw)
  assert not np.any(np.asarray(plain[1, 0])[kept0] == MASK)                  # MaskGIT keeps them


def test_decode_jits_with_traced_settings_and_checks_arguments():
  target = jnp.arange(20) % V
  critic = lambda tokens: jnp.zeros(tokens.shape)

  @jax.jit
  def run(rng, temperature, cond_scale, prime):
    return decoding.maskgit_decode(_target_fn(target), rng, batch=3, num_tokens=20, steps=4, mask_id=MASK,
                                   temperature=temperature, cond_scale=cond_scale, prime_tokens=prime,
                                   prime_mask=jnp.arange(20) < 2, critic_fn=critic)

  prime = jnp.full((3, 20), 5, jnp.int32)
  out = run(jax.random.key(0), jnp.float32(0.7), jnp.float32(2.0), prime)
  np.testing.assert_array_equal(out[:, :2], 5)
  np.testing.assert_array_equal(out[:, 2:], jnp.broadcast_to(target[2:], (3, 18)))
  np.testing.assert_array_equal(run(jax.random.key(0), jnp.float32(0.7), jnp.float32(2.0), prime), out)
  with pytest.raises(ValueError, match="steps"):
    decoding.maskgit_decode(_target_fn(target), jax.random.key(0), batch=1, num_tokens=20, steps=0, mask_id=MASK)
  with pytest.raises(ValueError, match="not both"):
    decoding.maskgit_decode(_target_fn(target), jax.random.key(0), batch=1, num_tokens=20, steps=2, mask_id=MASK,
                            critic_fn=critic, self_critic=True)
  with pytest.raises(ValueError, match="together"):
    decoding.maskgit_decode(_target_fn(target), jax.random.key(0), batch=1, num_tokens=20, steps=2, mask_id=MASK,
                            prime_tokens=prime[:1])
