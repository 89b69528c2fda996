"""Reading Hugging Face safetensors checkpoints into Flax parameter trees for the text encoders.

The model-specific loaders (`bert.load_bert_params`, `t5.load_t5_params`) build a table from HF tensor names
to parameter paths; `assign_params` applies it, transposes Linear weights, checks every shape against the
module's abstract init and reports missing and unexpected names in one error.
"""
import json
import os
from typing import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# What to do with an HF tensor before it becomes a Flax parameter.
IDENTITY = "identity"
TRANSPOSE = "transpose"  # torch.nn.Linear stores (out, in); flax Dense kernels are (in, out).


def resolve_safetensors(path) -> list[str]:
  """Shard files for `path`: a .safetensors file, a .safetensors.index.json, or a directory holding either."""
  path = os.fspath(path)
  if os.path.isdir(path):
    single, index = os.path.join(path, SAFETENSORS_FILE), os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(single):
      return [single]
    if os.path.isfile(index):
      path = index
    else:
      raise FileNotFoundError(
          f"No {SAFETENSORS_FILE} (or sharded {SAFETENSORS_INDEX}) in {path}: expected Hugging Face weights "
          "saved with safetensors (save_pretrained(..., safe_serialization=True)).")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint file not found: {path} (expected a .safetensors file).")
  if path.endswith(".json"):
    with open(path) as f:
      weight_map = json.load(f).get("weight_map")
    if not weight_map:
      raise ValueError(f"{path} has no 'weight_map': not a safetensors shard index.")
    shards = [os.path.join(os.path.dirname(path), s) for s in dict.fromkeys(weight_map.values())]
    for shard in shards:
      if not os.path.isfile(shard):
        raise FileNotFoundError(f"Shard {shard} named in {path} does not exist.")
    return shards
  return [path]


def read_safetensors(path, keep: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
  """All tensors (those for which `keep(name)` holds) of a checkpoint as numpy arrays (bf16 via ml_dtypes)."""
  tensors = {}
  for shard in resolve_safetensors(path):
    with safe_open(shard, framework="numpy") as f:
      for name in f.keys():
        if keep is None or keep(name):
          tensors[name] = f.get_tensor(name)
  return tensors


def _format_names(names: Iterable[str], limit: int = 20) -> str:
  names = sorted(names)
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def assign_params(
    tensors: Mapping[str, np.ndarray],
    table: Mapping[str, tuple[tuple[str, ...], str]],
    expected: Mapping[tuple[str, ...], jax.ShapeDtypeStruct],
    *,
    source: str,
    dtype=np.float32,
) -> dict:
  """Maps HF tensors onto a nested Flax params dict.

  Args:
    tensors: HF name -> array, already stripped of prefixes and of names the model ignores.
    table: HF name -> (flax param path, IDENTITY | TRANSPOSE), one entry per parameter the module needs.
    expected: flattened abstract params of the module (from `jax.eval_shape` of its init), for shape checks.
    source: the checkpoint's path, for error messages.
    dtype: dtype of the returned parameters.

  Raises:
    KeyError: listing the missing and the unexpected tensor names.
    ValueError: listing tensors whose shape does not fit the config.
  """
  missing = set(table) - set(tensors)
  unexpected = set(tensors) - set(table)
  if missing or unexpected:
    lines = [f"Checkpoint {source} does not match the module's parameters."]
    if missing:
      lines.append(f"Missing ({len(missing)}): {_format_names(missing)}")
    if unexpected:
      lines.append(f"Unexpected ({len(unexpected)}): {_format_names(unexpected)}")
    raise KeyError("\n".join(lines))
  flat, bad = {}, []
  for name, (param_path, op) in table.items():
    value = np.asarray(tensors[name])
    if op == TRANSPOSE:
      value = value.T
    want = expected[param_path].shape
    if value.shape != tuple(want):
      bad.append(f"{name}: checkpoint {tuple(value.shape)} -> {'/'.join(param_path)} expects {tuple(want)}")
      continue
    flat[param_path] = np.ascontiguousarray(value.astype(dtype))
  if bad:
    raise ValueError(f"Shape mismatch between {source} and the config:\n" + "\n".join(bad))
  uncovered = set(expected) - set(flat)
  if uncovered:  # A bug in a loader's table rather than in the checkpoint.
    raise KeyError(f"No checkpoint tensor maps onto: {_format_names('/'.join(p) for p in uncovered)}")
  return traverse_util.unflatten_dict(flat)


def abstract_params(module, *args) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flattened parameter shapes of `module.init(key, *args)`, without allocating or compiling anything."""
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
  return traverse_util.flatten_dict(variables["params"])
