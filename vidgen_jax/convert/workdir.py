"""What both checkpoint importers share to turn converted parameters into a workdir that `vidgen sample`,
`vidgen eval` and `vidgen train` (resume) use: text-encoder checks, the parameter-tree check against the
config's model, and the saved train state."""
import json
import pathlib


class TextDim:
  """Stands in for the text encoder while building the run: only its width shapes the model."""

  def __init__(self, dim):
    self.dim = dim


def text_width(encoder, path) -> int:
  """The feature width of a text encoder (minilm: 384; bert/t5: read from the model directory's config)."""
  if encoder == "minilm" and not path:
    return 384
  config = pathlib.Path(path) / "config.json"
  if not config.is_file():
    raise FileNotFoundError(f"text encoder {encoder!r}: {config} not found (text_path must be a Hugging Face "
                            "model directory with config.json, model.safetensors and tokenizer.json)")
  raw = json.loads(config.read_text())
  width = raw.get("d_model") if encoder == "t5" else raw.get("hidden_size")
  if not width:
    raise ValueError(f"{config}: no {'d_model' if encoder == 't5' else 'hidden_size'}")
  return int(width)


def check_text_encoder(arg: str, width: int, encoder: str, path, reference_model: str) -> int:
  """Checks that `encoder` (minilm, bert or t5; the last two from the model directory `path`) gives the
  `width`-wide features the checkpoint's `arg` (e.g. "cond_dim=768") asks for; returns that width."""
  if encoder not in ("minilm", "bert", "t5"):
    raise ValueError(f"text encoder {encoder!r} unknown; choose minilm, bert or t5")
  if encoder in ("bert", "t5") and not path:
    raise ValueError(f"{arg} needs the {encoder} text encoder: pass text_path (--text-path), a Hugging Face "
                     f"model directory (the reference used {reference_model})")
  got = text_width(encoder, path)
  if got != width:
    raise ValueError(f"{arg} but the {encoder} text encoder{' at ' + str(path) if path else ''} gives "
                     f"{got}-wide features")
  return got


def refuse_existing(workdir: pathlib.Path):
  if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
    raise ValueError(f"{workdir} already holds checkpoints: convert into a new --workdir")


def check_tree(run_params, variables, what: str):
  """The converted `variables` have exactly the shapes of the run's (abstract) params, or a ValueError."""
  import jax
  import numpy as np
  from flax import traverse_util
  ours = traverse_util.flatten_dict(jax.tree.map(lambda a: tuple(a.shape), run_params))
  theirs = traverse_util.flatten_dict(jax.tree.map(np.shape, variables))
  if ours != theirs:
    diff = sorted("/".join(p) for p in set(ours.items()) ^ set(theirs.items()))
    raise ValueError(f"the config's {what} does not have the converted parameter tree (a new model option "
                     f"defaulting on?): {', '.join(diff[:10])}")


def save_workdir(workdir: pathlib.Path, run, c, converted: dict, step: int, rest_fn=None):
  """Saves a fresh train state (step `step`) whose params and EMA params are `converted` plus `rest_fn(key)`
  (the subtrees that are not converted, e.g. a fresh discriminator), with config.json, into `workdir`."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from vidgen_jax import configs
  from vidgen_jax.train import checkpoint as ckpt_lib
  from vidgen_jax.train import state as state_lib

  def make_state(converted, key, step):
    k_rest, k_train = jax.random.split(key)
    rest = nn.meta.unbox(rest_fn(k_rest)) if rest_fn is not None else {}
    return state_lib.create_state({**converted, **rest}, run.tx, k_train).replace(step=step)

  with run.context():
    state = jax.jit(make_state, out_shardings=run.state_shardings)(
        converted, jax.random.key(c.seed), jnp.asarray(step, jnp.int32))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(configs.to_json(c))
  saver = ckpt_lib.Checkpointer(workdir, keep=c.train.keep_ckpts)
  try:
    saver.save(step, state, config=c, force=True)
  finally:
    saver.close()
