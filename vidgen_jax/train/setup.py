"""Everything a training run needs, built from its config: mesh, rules, text encoder, model, optimizer, state.

The model family (config.family: vdm, cvivit, phenaki) supplies the family-specific parts through a small
module interface (`vidgen_jax.train.families`): validate, build_components, BATCH_NDIMS, make_state_fn,
step_fn. Everything else (mesh, sharding, checkpoints, the loop) is shared.
"""
import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import optax

from vidgen_jax.parallel import mesh as mesh_lib
from vidgen_jax.parallel import sharding as sharding_lib
from vidgen_jax.text import encoder as text_lib
from vidgen_jax.train import families
from vidgen_jax.train import state as state_lib


@dataclasses.dataclass
class Run:
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  text_encoder: Any
  model: Any
  sched: Any
  tx: optax.GradientTransformation
  lr_fn: optax.Schedule
  state_shardings: Any
  abstract_state: Any
  family: Any = None          # the family module (families.get(config.family))
  parts: dict = dataclasses.field(default_factory=dict)   # family-specific components beyond model/sched

  def batch_shardings(self) -> dict:
    """Shardings of the device part of a batch: leading (batch) axis over data x fsdp."""
    ndims = self.family.batch_ndims(self.config) if hasattr(self.family, "batch_ndims") else self.family.BATCH_NDIMS
    return {k: sharding_lib.batch_sharding(self.mesh, n, self.rules) for k, n in ndims.items()}

  def jit_train_step(self):
    """The jitted train step fn(state, batch) with explicit shardings; the incoming state is donated.

    A family whose step needs frozen arrays that are not part of the train state (the perceptual loss's VGG
    weights) returns them from `step_constants(run)`: they are passed to the step as a third, replicated
    argument, never baked into the compiled program as constants nor checkpointed.
    """
    step = self.family.step_fn(self)
    constants = getattr(self.family, "step_constants", lambda run: None)(self)
    if constants is None:
      return jax.jit(step, in_shardings=(self.state_shardings, self.batch_shardings()),
                     out_shardings=(self.state_shardings, None), donate_argnums=(0,))
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    constants = jax.device_put(constants, replicated)
    jitted = jax.jit(step, in_shardings=(self.state_shardings, self.batch_shardings(), replicated),
                     out_shardings=(self.state_shardings, None), donate_argnums=(0,))
    return _BoundStep(jitted, constants)

  def context(self):
    """Mesh + logical rules context for tracing steps (activates the model's sharding constraints)."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_state(self, seed: int):
    """A fresh, sharded train state: parameters are created on their devices, never whole on one host."""
    fn = self._state_fn()
    with self.context():
      return jax.jit(lambda k: nn.meta.unbox(fn(k)), out_shardings=self.state_shardings)(jax.random.key(seed))

  def _state_fn(self):
    return self.family.make_state_fn(self)


@dataclasses.dataclass(frozen=True)
class _BoundStep:
  """A jitted fn(state, batch, constants) called and lowered as fn(state, batch)."""
  jitted: Any
  constants: Any

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.constants)

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.constants)


def build_text_encoder(config):
  t = config.text
  return text_lib.CachedTextEncoder(text_lib.load_text_encoder(t.encoder, t.path or None, t.max_length))


def build_run(config, *, text_encoder=None, devices=None) -> Run:
  mesh = mesh_lib.make_mesh(config.mesh.to_dict(), devices)
  rules = sharding_lib.get_rules(config.sharding.preset, config.sharding.extra_rules)
  family = families.get(config.get("family", "vdm"))
  text_encoder = text_encoder or (build_text_encoder(config) if family.NEEDS_TEXT else None)
  parts = family.build_components(config, text_encoder)
  model, sched = parts.pop("model"), parts.pop("sched", None)
  tx, lr_fn = parts.pop("optimizer", None) or state_lib.make_optimizer(config.optim, config.train.num_steps)
  run = Run(config, mesh, rules, text_encoder, model, sched, tx, lr_fn, None, None, family=family, parts=parts)
  boxed = jax.eval_shape(run._state_fn(), jax.random.key(0))
  run.state_shardings = sharding_lib.logical_to_sharding(boxed, mesh, rules)
  run.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sharding_lib.unbox_abstract(boxed),
      run.state_shardings)
  return run
