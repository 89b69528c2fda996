"""MaskGIT iterative parallel decoding (Chang et al. 2022), optionally critic-guided (Token-Critic, Lezama et
al. 2022), as one `lax.scan` over a static number of steps. Independent of any network: the generator is a
callable.

  logits_fn(tokens, null) -> (B', N, V) float logits
      tokens (B', N) int32, mask_id at masked positions, pad_id at padding; null (B',) bool, True = drop the
      condition (the unconditional / null-text pass). With guidance B' = 2B (both passes in one batch: rows
      [:B] conditional, [B:] null), otherwise B' = B. Logits at index mask_id and above, if V includes them,
      are never sampled.
  critic_fn(tokens (B, N) int32) -> (B, N) float logits that a token is fake (re-masked first).

Decoding starts with every free position masked (free = valid and not primed). Step i = 0 … steps−1, with
r = (i+1)/steps:
  1. logits = guided_logits(...) (null + cond_scale·(cond − null)), optionally top-k filtered;
  2. every masked position is sampled at temperature τ = temperature·(1 − r) (annealed linearly to 0, so the
     last step takes the argmax; phenaki-pytorch anneals its sampling temperature the same way);
  3. scores: MaskGIT confidence = log softmax(logits)[sampled] + τ_c·Gumbel noise, τ_c = choice_temperature·
     (1 − r); the candidates for re-masking are the positions sampled at this step (decoded tokens stay).
     With critic_fn (Token-Critic): confidence = −critic_fn(filled tokens) + τ_c·Gumbel and every free
     position is a candidate, so the critic may send back a token decoded at an earlier step. With
     self_critic: the critic score of a token is the generator's own log-probability of it when it was
     sampled (kept across steps), again over every free position;
  4. the num_masked(r, n_free) lowest-confidence candidates are masked again (schedule.num_masked: ceil of
     gamma(r)·n_free, >= 1 before the last step, 0 after it), so the last step leaves nothing masked.
Prime positions (prime frames, the end of a previous scene) are given and never change; padding positions
(valid False) stay pad_id and are never sampled.
"""
import jax
import jax.numpy as jnp

from vidgen_jax.maskgit import schedule as schedule_lib

_NEG = -1e9


def guided_logits(logits_fn, tokens, cond_scale):
  """float32 (B, N, V) classifier-free guided logits null + cond_scale·(cond − null).

  cond_scale 1 (a Python number) runs only the conditional pass and 0 only the null one; otherwise both run
  in one doubled batch (tokens repeated; null False for the first B rows, True for the last B). cond_scale may
  be traced (then both passes always run).
  """
  b = tokens.shape[0]
  if isinstance(cond_scale, (int, float)) and cond_scale in (0, 1):
    return logits_fn(tokens, jnp.full((b,), cond_scale == 0)).astype(jnp.float32)
  null = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
  out = logits_fn(jnp.concatenate([tokens, tokens]), null).astype(jnp.float32)
  cond, uncond = out[:b], out[b:]
  return uncond + jnp.asarray(cond_scale, jnp.float32) * (cond - uncond)


def topk_filter_logits(logits, k: int):
  """Keeps the k largest logits of every position (ties with the k-th are kept too) and sets the rest to a
  large negative value, so sampling only ever picks among the top k."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth, logits, _NEG)


def sample_tokens(rng, logits, temperature=1.0, mask_id=None):
  """int32 draws from softmax(logits / temperature) over the last axis (argmax where temperature is 0);
  logits at index mask_id and above are excluded when the vocabulary includes them. temperature may be
  traced."""
  logits = logits.astype(jnp.float32)
  if mask_id is not None and logits.shape[-1] > mask_id:
    logits = logits.at[..., mask_id:].set(_NEG)
  temperature = jnp.asarray(temperature, jnp.float32)
  drawn = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, drawn, jnp.argmax(logits, -1)).astype(jnp.int32)


def _check_args(steps, prime_tokens, prime_mask, critic_fn, self_critic, topk_filter):
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a Python int >= 1, got {steps!r}")
  if (prime_tokens is None) != (prime_mask is None):
    raise ValueError("prime_tokens and prime_mask go together")
  if critic_fn is not None and self_critic:
    raise ValueError("give critic_fn or self_critic, not both")
  if topk_filter is not None and (not isinstance(topk_filter, int) or topk_filter < 1):
    raise ValueError(f"topk_filter must be a Python int >= 1 or None, got {topk_filter!r}")


def maskgit_decode(logits_fn, rng, *, batch: int, num_tokens: int, steps: int, mask_id: int, schedule="cosine",
                   temperature=1.0, choice_temperature=None, cond_scale=1.0, prime_tokens=None, prime_mask=None,
                   valid=None, critic_fn=None, self_critic: bool = False, topk_filter=None, pad_id=None,
                   return_history: bool = False, return_states: bool = False):
  """Decodes (batch, num_tokens) int32 tokens in `steps` steps (see the module docstring).

  schedule: a schedule name or callable (schedule.gamma). temperature: the sampling temperature at the start,
  annealed linearly to 0. choice_temperature: the scale of the Gumbel noise on the re-masking scores at the
  start, annealed likewise (None: the same as temperature; MaskGIT uses 4.5). cond_scale: guidance scale
  (1: conditional only). prime_tokens / prime_mask (B, N): positions given in advance, never changed.
  valid (B, N) or (N,) bool: False marks padding of shorter videos, left as pad_id (default mask_id) and fed to
  logits_fn as such. critic_fn / self_critic: re-mask by a critic instead of the sampling confidence.
  topk_filter: sample only among the k most likely tokens.
  `batch`, `num_tokens`, `steps`, the flags and topk_filter are static; rng, temperature, choice_temperature,
  cond_scale and the arrays may be traced. Returns the tokens; with return_history also the (steps, B) int32
  number of valid positions still masked after every step; with return_states also the (steps, B, N) tokens
  after every step (order: tokens, history, states).
  """
  _check_args(steps, prime_tokens, prime_mask, critic_fn, self_critic, topk_filter)
  shape = (batch, num_tokens)
  pad_id = mask_id if pad_id is None else pad_id
  valid = jnp.ones(shape, bool) if valid is None else jnp.broadcast_to(jnp.asarray(valid, bool), shape)
  fixed = jnp.zeros(shape, bool) if prime_mask is None else jnp.broadcast_to(jnp.asarray(prime_mask, bool), shape)
  fixed = fixed & valid
  free = valid & ~fixed
  num_free = free.sum(-1)
  tokens = jnp.where(valid, mask_id, pad_id).astype(jnp.int32)
  if prime_tokens is not None:
    tokens = jnp.where(fixed, jnp.broadcast_to(jnp.asarray(prime_tokens, jnp.int32), shape), tokens)
  temperature = jnp.asarray(temperature, jnp.float32)
  choice_temperature = temperature if choice_temperature is None else jnp.asarray(choice_temperature, jnp.float32)
  whole_sequence = critic_fn is not None or self_critic   # Token-Critic style: any free token may go back

  def step(carry, i):
    tokens, masked, scores = carry
    r = (i + 1).astype(jnp.float32) / steps
    k_sample, k_noise = jax.random.split(jax.random.fold_in(rng, i))
    logits = guided_logits(logits_fn, tokens, cond_scale)
    if logits.shape[-1] > mask_id:
      logits = logits.at[..., mask_id:].set(_NEG)
    if topk_filter is not None:
      logits = topk_filter_logits(logits, topk_filter)
    sampled = sample_tokens(k_sample, logits, temperature * (1.0 - r))
    filled = jnp.where(masked, sampled, tokens)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), sampled[..., None], -1)[..., 0]
    if critic_fn is not None:
      confidence = -critic_fn(filled).astype(jnp.float32)
    elif self_critic:
      scores = jnp.where(masked, logp, scores)
      confidence = scores
    else:
      confidence = logp
    candidates = free if whole_sequence else masked
    noise = jax.random.gumbel(k_noise, shape, jnp.float32)
    confidence = jnp.where(candidates, confidence + choice_temperature * (1.0 - r) * noise, jnp.inf)
    k = schedule_lib.num_masked(r, num_free, schedule)                         # (B,) left masked
    remask = (schedule_lib.rank_along_last(confidence) < k[:, None]) & candidates
    tokens = jnp.where(remask, mask_id, filled)
    out = (remask.sum(-1).astype(jnp.int32) if return_history else None, tokens if return_states else None)
    return (tokens, remask, scores), out

  init = (tokens, free, jnp.zeros(shape, jnp.float32))
  (tokens, _, _), (history, states) = jax.lax.scan(step, init, jnp.arange(steps, dtype=jnp.int32))
  extra = tuple(x for x, want in ((history, return_history), (states, return_states)) if want)
  return (tokens,) + extra if extra else tokens
