"""Training losses of MaskGIT and of the Token-Critic, with condition dropout that really drops."""
import jax
import jax.numpy as jnp
import optax


def cfg_drop(rng, batch: int, prob: float):
  """(B,) bool: True drops the text of that sample (trains the null condition). phenaki-pytorch overwrites
  its dropout probability with 0 before use, so its null branch is never trained (anchors 2.10-b)."""
  return jax.random.bernoulli(rng, prob, (batch,))


def masked_token_loss(logits, targets, mask):
  """Cross-entropy over the masked positions only (mean over them) and the accuracy there.

  logits (B, N, V), targets (B, N) int, mask (B, N) bool (True = masked = predicted)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  m = mask.astype(jnp.float32)
  count = jnp.maximum(m.sum(), 1.0)
  loss = (ce * m).sum() / count
  acc = ((jnp.argmax(logits, -1) == targets).astype(jnp.float32) * m).sum() / count
  return loss, {"masked_ce": loss, "masked_acc": acc}


def critic_inputs_and_labels(rng, tokens, mask, generator_logits, temperature: float = 1.0):
  """Token-Critic examples: masked positions are filled by sampling the (stop-gradient) generator logits;
  label 1 marks a token that differs from the real one. Unmasked positions keep the real token and label 0
  (phenaki-pytorch labels every position where the generator's prediction differs, even unmasked ones
  whose input is the real token: anchors 2.10-c). Returns (critic input tokens (B, N), labels (B, N))."""
  logits = jax.lax.stop_gradient(generator_logits).astype(jnp.float32) / max(temperature, 1e-6)
  sampled = jax.random.categorical(rng, logits, axis=-1)
  inputs = jnp.where(mask, sampled, tokens)
  return inputs, (inputs != tokens) & mask


def critic_loss(critic_logits, labels, valid=None):
  """Sigmoid binary cross-entropy of per-token 'fake' logits (B, N) against labels, mean over valid ones."""
  bce = optax.sigmoid_binary_cross_entropy(critic_logits.astype(jnp.float32), labels.astype(jnp.float32))
  w = jnp.ones_like(bce) if valid is None else valid.astype(jnp.float32)
  return (bce * w).sum() / jnp.maximum(w.sum(), 1.0)
