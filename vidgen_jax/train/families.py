"""Model families: config.family -> the module that trains it.

A family module provides:
  NEEDS_TEXT                 bool: whether build_run loads the config's text encoder
  BATCH_NDIMS                {batch key: ndim} of the arrays the train step receives (leading axis = batch)
  batch_ndims(config) -> dict                       optional: BATCH_NDIMS when some keys depend on the config
  validate(config, num_devices, num_processes)      raises ConfigError listing every problem
  build_components(config, text_encoder) -> dict    'model' (required), 'sched', 'optimizer' ((tx, lr_fn);
                                                    default: state.make_optimizer), anything else -> Run.parts
  make_state_fn(run) -> fn(key) -> boxed TrainState (traced under jit with sharded outputs)
  step_fn(run) -> fn(state, batch) -> (state, metrics)
  host_batch(run, batch) -> batch                   host-side additions (e.g. text embeddings)
  step_constants(run) -> pytree | None              optional: frozen arrays outside the train state (e.g.
                                                    the perceptual VGG), passed to step_fn's fn as a 3rd arg
and its sampling class is registered in `vidgen_jax.sample.generate`.
"""
import importlib

_MODULES = {
    "vdm": "vidgen_jax.train.vdm",
    "cvivit": "vidgen_jax.train.cvivit",
    "phenaki": "vidgen_jax.train.phenaki",
}


def names() -> tuple:
  return tuple(_MODULES)


def get(name: str):
  if name not in _MODULES:
    raise ValueError(f"model family {name!r} unknown; choose one of {sorted(_MODULES)}")
  return importlib.import_module(_MODULES[name])
