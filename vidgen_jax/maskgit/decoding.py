"""MaskGIT iterative parallel decoding (Chang et al. 2022), optionally Token-Critic guided, as one lax loop.

`maskgit_decode(logits_fn, rng, ...)` starts from all positions masked (except fixed prime tokens and
padding) and runs `steps` iterations: at step i it samples every masked position from the (guided)
logits with temperature τ_i = temperature·(1 − (i+1)/steps) (annealed to 0), then re-masks the
num_masked((i+1)/steps) least confident of the positions it was free to choose. Confidence is the
sampled token's log-probability plus Gumbel noise scaled by τ_i (MaskGIT), or, with `critic_fn`, minus
the critic's "fake" logit (Token-Critic: the critic picks what to re-mask). The last step leaves nothing
masked.

  logits_fn(tokens (B, N) int32 with mask_id at masked positions, null (B,) bool) -> (B, N, V) logits
  critic_fn(tokens (B, N)) -> (B, N) logits that a token is fake (re-masked first)
"""
import jax
import jax.numpy as jnp

from vidgen_jax.maskgit import schedule as schedule_lib

_NEG = -1e9


def guided_logits(logits_fn, tokens, cond_scale):
  """Classifier-free guidance null + (cond − null)·scale, both passes in one doubled batch."""
  b = tokens.shape[0]
  if isinstance(cond_scale, (int, float)) and cond_scale == 1:
    return logits_fn(tokens, jnp.zeros((b,), bool))
  out = logits_fn(jnp.concatenate([tokens, tokens]), jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)]))
  cond, null = out[:b].astype(jnp.float32), out[b:].astype(jnp.float32)
  return null + (cond - null) * cond_scale


def maskgit_decode(logits_fn, rng, *, batch: int, num_tokens: int, steps: int, mask_id: int,
                   schedule: str = "cosine", temperature: float = 1.0, cond_scale=1.0, prime_tokens=None,
                   prime_mask=None, valid=None, critic_fn=None, return_history: bool = False):
  """Decodes (B, N) int32 tokens. prime_tokens/prime_mask (B, N): positions given in advance (prime frames,
  the end of the previous scene), never changed. valid (B, N) bool: False positions are padding and come
  out as mask_id. `steps` and the shapes are static; temperature and cond_scale may be traced.
  With return_history, also returns the (steps, B) number of masked tokens after every step."""
  n = num_tokens
  valid = jnp.ones((batch, n), bool) if valid is None else valid.astype(bool)
  fixed = jnp.zeros((batch, n), bool) if prime_mask is None else prime_mask.astype(bool) & valid
  free = valid & ~fixed
  tokens = jnp.full((batch, n), mask_id, jnp.int32)
  if prime_tokens is not None:
    tokens = jnp.where(fixed, prime_tokens.astype(jnp.int32), tokens)
  num_free = free.sum(-1)

  def body(i, carry):
    tokens, history = carry
    key = jax.random.fold_in(rng, i)
    k_sample, k_gumbel = jax.random.split(key)
    masked = tokens == mask_id
    logits = guided_logits(logits_fn, tokens, cond_scale)
    logits = logits.at[..., mask_id:].set(_NEG) if logits.shape[-1] > mask_id else logits
    tau = temperature * (1.0 - (i + 1) / steps)
    sampled = jnp.where(tau > 0, jax.random.categorical(k_sample, logits / jnp.maximum(tau, 1e-6), axis=-1),
                        jnp.argmax(logits, axis=-1)).astype(jnp.int32)
    choose = masked & free
    tokens = jnp.where(choose, sampled, tokens)
    if critic_fn is not None:
      confidence = -critic_fn(tokens).astype(jnp.float32)
    else:
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), sampled[..., None], -1)[..., 0]
      confidence = logp
    gumbel = -jnp.log(-jnp.log(jax.random.uniform(k_gumbel, confidence.shape, minval=1e-20, maxval=1.0)))
    confidence = confidence + tau * gumbel
    # Only positions chosen this step may go back to masked; everything else is kept.
    confidence = jnp.where(choose, confidence, jnp.inf)
    k = schedule_lib.num_masked((i + 1) / steps, num_free, schedule)          # (B,) to keep masked
    rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
    remask = (rank < k[:, None]) & choose
    tokens = jnp.where(remask, mask_id, tokens)
    history = history.at[i].set((tokens == mask_id).sum(-1) - (~valid).sum(-1))
    return tokens, history

  history = jnp.zeros((steps, batch), jnp.int32)
  tokens, history = jax.lax.fori_loop(0, steps, body, (tokens, history))
  tokens = jnp.where(valid, tokens, mask_id)
  return (tokens, history) if return_history else tokens
