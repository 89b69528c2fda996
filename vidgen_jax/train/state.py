"""The train state shared by the model families: a pytree, donated to and returned by the jitted step."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The layers' compute dtype named by `train.compute_dtype` (float32 when a config predates the key).
  Parameters, optimizer state and losses stay float32 whatever it is."""
  name = config.train.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"train.compute_dtype={name!r}: choose one of {sorted(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer updates applied so far
  params: Any
  ema_params: Any          # exponential moving average of params, updated inside the step
  opt_state: Any
  rng: jax.Array           # uint32 raw key data; the step's key is fold_in(rng, step)
  bad_steps: jax.Array     # int32 scalar: consecutive steps whose update was dropped (non-finite loss/grads)

  def step_key(self):
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def create_state(params, tx: optax.GradientTransformation, rng_key) -> TrainState:
  """Builds a fresh state; call inside jit so that sharded params give sharded optimizer state and EMA."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=jax.random.key_data(rng_key),
      bad_steps=jnp.zeros((), jnp.int32),
  )


def ema_decay_at(step, decay):
  """EMA warm-up: the effective decay grows as (1+step)/(10+step) until it reaches `decay`."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def apply_update(state: TrainState, grads, tx: optax.GradientTransformation, ema_decay: float, ok) -> TrainState:
  """Optimizer + EMA update, applied only where `ok` (a scalar bool): otherwise the state is kept as it was.

  A non-finite loss or gradient therefore never reaches the parameters, the EMA or a checkpoint. The step
  counter still advances (the next step draws fresh noise, and data position and step stay in lock-step);
  `bad_steps` counts the consecutive skips so the loop can abort.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = ema_decay_at(state.step, ema_decay)
  ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  return state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      ema_params=keep(ema, state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
  )


def make_optimizer(optim, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up, then cosine decay to 10% or a constant rate; optional global-norm clipping."""
  warmup = int(optim.warmup_steps)
  if optim.decay == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, optim.lr, max(warmup, 1), max(num_steps, warmup + 1),
                                            end_value=0.1 * optim.lr)
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, optim.lr, max(warmup, 1)),
                               optax.constant_schedule(optim.lr)], [max(warmup, 1)])
  parts = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
  parts.append(optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
  return optax.chain(*parts), lr
