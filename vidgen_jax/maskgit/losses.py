"""Training losses of MaskGIT and of the Token-Critic, and condition dropout that really drops.

- `masked_token_loss`: cross-entropy on the masked (and valid) positions only, with accuracy.
- `critic_inputs_and_labels` / `critic_targets_and_inputs`: Token-Critic (Lezama et al. 2022) examples.
  The real tokens are partly masked, the generator (stop-gradient) fills the masked positions by sampling,
  and a position is labelled 1 ("fake") exactly when it was masked AND the sampled token differs from the
  real one. phenaki-pytorch compares the real ids with the generator's samples at every position (anchors
  2.10-c): unmasked positions, whose critic input is the real token, are labelled fake whenever the
  generator's (unused) sample there differs, which teaches the critic to call real tokens fake at random.
- `critic_loss`: sigmoid binary cross-entropy of per-token "fake" logits over the valid positions.
- `cfg_drop`: the per-sample condition dropout for classifier-free guidance. phenaki-pytorch overwrites its
  `cond_drop_prob` with 0 before use, so its null condition is never trained (anchors 2.10-b); this one drops.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from vidgen_jax.maskgit import schedule as schedule_lib
from vidgen_jax.maskgit.decoding import sample_tokens


def cfg_drop(rng, batch: int, prob):
  """(batch,) bool, True with probability `prob` independently per sample: that sample's condition is
  replaced by the null one (trains the unconditional branch used by guidance). prob may be traced."""
  if isinstance(prob, (int, float)) and not 0.0 <= prob <= 1.0:
    raise ValueError(f"condition dropout probability must be in [0, 1], got {prob}")
  return jax.random.bernoulli(rng, prob, (batch,))


def masked_token_loss(logits, targets, mask, valid=None):
  """Mean cross-entropy over the positions that are masked and valid, and the accuracy there.

  logits (B, N, V) float, targets (B, N) int, mask (B, N) bool (True = masked = predicted), valid (B, N) bool
  or None (all valid). Returns (loss, stats) with stats {'masked_ce', 'masked_acc', 'masked_frac'}
  (masked_frac: masked positions over valid ones). With nothing masked the loss is 0.
  """
  m = jnp.asarray(mask, bool)
  valid = jnp.ones_like(m) if valid is None else jnp.asarray(valid, bool)
  m = m & valid
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  w = m.astype(jnp.float32)
  count = jnp.maximum(w.sum(), 1.0)
  loss = (ce * w).sum() / count
  # right = the target's logit is the largest (a tie counts as right): a max and a gather, where an argmax
  # is a variadic reduction, slow on XLA:CPU (4% of the MaskGIT-S train step)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  right = target_logit >= jnp.max(logits, axis=-1)
  acc = (right.astype(jnp.float32) * w).sum() / count
  frac = w.sum() / jnp.maximum(valid.sum().astype(jnp.float32), 1.0)
  return loss, {"masked_ce": loss, "masked_acc": acc, "masked_frac": frac}


def critic_inputs_and_labels(rng, tokens, mask, generator_logits, temperature=1.0, mask_id=None):
  """Token-Critic inputs and labels from given generator logits.

  tokens (B, N) int: the real tokens; mask (B, N) bool: positions that were masked for the generator;
  generator_logits (B, N, V): its output on the masked input (gradient stopped here). Masked positions are
  filled with samples at `temperature`; unmasked ones keep the real token. labels (B, N) bool are True exactly
  where a masked position received a token different from the real one (a resample to the real token is
  label 0, an unmasked position is always 0). Returns (critic input tokens (B, N) int32, labels).
  """
  logits = jax.lax.stop_gradient(generator_logits)
  sampled = sample_tokens(rng, logits, temperature, mask_id)
  tokens = jnp.asarray(tokens, jnp.int32)
  mask = jnp.asarray(mask, bool)
  inputs = jnp.where(mask, sampled, tokens)
  return inputs, mask & (inputs != tokens)


class CriticExample(NamedTuple):
  inputs: jax.Array   # (B, N) int32 critic input: real tokens with the masked positions resampled
  labels: jax.Array   # (B, N) bool: True where the token is not the real one (train the critic on these)
  mask: jax.Array     # (B, N) bool: the positions that were masked for the generator


def critic_targets_and_inputs(rng, tokens, generator_logits_fn, *, mask_id: int, schedule="cosine", valid=None,
                              temperature=1.0):
  """A full Token-Critic training example from real tokens and the generator.

  A training mask is drawn with `sample_train_mask(schedule, valid)`, the generator sees the tokens with
  mask_id at the masked positions, `generator_logits_fn(masked_tokens (B, N) int32) -> (B, N, V)` is
  evaluated under stop-gradient, and its samples fill the masked positions (see critic_inputs_and_labels).
  Padding (valid False) is never masked, so its label is 0; weight the loss with `valid` as well.
  Returns CriticExample(inputs, labels, mask).
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  b, n = tokens.shape
  k_mask, k_sample = jax.random.split(rng)
  mask = schedule_lib.sample_train_mask(k_mask, b, n, schedule, valid)
  logits = generator_logits_fn(jnp.where(mask, mask_id, tokens))
  inputs, labels = critic_inputs_and_labels(k_sample, tokens, mask, logits, temperature, mask_id)
  return CriticExample(inputs, labels, mask)


def critic_loss(critic_logits, labels, valid=None):
  """Sigmoid binary cross-entropy of per-token 'fake' logits (B, N) against bool labels (B, N), averaged over
  the valid positions (all when valid is None)."""
  bce = optax.sigmoid_binary_cross_entropy(critic_logits.astype(jnp.float32), jnp.asarray(labels, jnp.float32))
  w = jnp.ones_like(bce) if valid is None else jnp.asarray(valid, jnp.float32)
  return (bce * w).sum() / jnp.maximum(w.sum(), 1.0)
