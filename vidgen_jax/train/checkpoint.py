"""Orbax checkpoints of a run: the sharded train state, the grain iterator position and the config, together.

Layout: WORKDIR/checkpoints/<step>/{state, data, config}. Restores go straight onto the target shardings
(an abstract tree of ShapeDtypeStructs carrying NamedShardings), never through one host's memory.
"""
import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from vidgen_jax import configs


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager for one run directory."""

  def __init__(self, workdir, *, keep: int = 2, every: int = 1000):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    # Every `every` steps, plus whenever JAX's preemption notice reaches every host (TPU maintenance events);
    # no "initial" save of step 1, which Orbax's default policy would add.
    policy = ocp.checkpoint_managers.AnySavePolicy([
        ocp.checkpoint_managers.FixedIntervalPolicy(every),
        ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
    ])
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_decision_policy=policy, create=True,
                                           enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iter=None, config=None, *, force=False) -> bool:
    """Saves when the interval says so (or `force`); returns whether a save started."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config.to_dict())
    return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iter=None, step=None):
    """Restores the state onto the shardings carried by `abstract_state`, and the iterator in place."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


# The parts of a train state that are the model (what fine-tuning starts from); the rest (step, optimizer
# moments, rng, the non-finite counter) belongs to one run.
WEIGHT_FIELDS = ("params", "ema_params")


def restore_weights(source_workdir, abstract_state, step=None):
  """{field: tree} for WEIGHT_FIELDS from another run's checkpoint (its latest, or `step`), restored straight
  onto the shardings carried by `abstract_state`; returns (weights, step). The optimizer state is not read,
  so the two runs may use different optimizers.

  Raises FileNotFoundError when the source has no such checkpoint, ValueError when its weights' structure or
  shapes differ from `abstract_state`'s (a different model)."""
  directory = pathlib.Path(source_workdir).absolute() / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"train.init_from: {directory} not found; give a workdir made by `vidgen train`")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    steps = list(manager.all_steps())
    step = manager.latest_step() if step is None else int(step)
    if step not in steps:
      raise FileNotFoundError(f"train.init_from: no checkpoint at step {step} in {directory} "
                              f"(steps there: {sorted(steps)})")
    target = {name: getattr(abstract_state, name) for name in WEIGHT_FIELDS}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True)))["state"]
    except (ValueError, KeyError) as e:
      raise ValueError(f"train.init_from: the weights in {directory}/{step} do not fit this model ({e})") from e
  finally:
    manager.close()
  for name in WEIGHT_FIELDS:   # Orbax may restore a smaller array into a larger target; refuse that
    for got, want in zip(jax.tree.leaves(restored[name]), jax.tree.leaves(target[name])):
      if got.shape != want.shape:
        raise ValueError(f"train.init_from: the weights in {directory}/{step} do not fit this model "
                         f"(an array of shape {got.shape} where this model has {want.shape})")
  return restored, step


def abstract_like(tree, shardings):
  """ShapeDtypeStructs with the given shardings: the restore target for a sharded tree."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def read_config(workdir):
  """The config a workdir was trained with (workdir/config.json)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a vidgen workdir (made by `vidgen train`)?")
  return configs.from_json(path.read_text())
