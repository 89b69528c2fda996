"""Loading, overriding and validating ml_collections configs.

A config is a Python file with `get_config(arg: str | None) -> ConfigDict`; `arg` is the text after ':' in
`--config configs/vdm_shapes.py:variant=S,runlocal=True`. Overrides come as `--config.train.lr=3e-4` (or
`--config.train.lr 3e-4`) and are parsed as the type of the field they replace.
"""
import ast
import importlib.util
import json
import pathlib
from collections.abc import Sequence

import ml_collections

ConfigDict = ml_collections.ConfigDict


def parse_arg(arg: str | None, **defaults):
  """Parses 'variant=S,runlocal=True' into a ConfigDict of `defaults` updated with typed values."""
  out = ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    if not item.strip():
      continue
    if "=" not in item:
      raise ValueError(f"config argument {item!r}: expected key=value (arguments: {', '.join(defaults)})")
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"config argument {key!r} unknown; known: {', '.join(defaults)}")
    try:
      out[key] = _coerce(value, defaults[key])
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"config argument {key}={value!r}: expected {type(defaults[key]).__name__} ({e})") from None
  return out


def _coerce(text: str, like):
  if isinstance(like, bool):
    if text.lower() in ("1", "true", "yes", "on"):
      return True
    if text.lower() in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"expected a boolean, got {text!r}")
  if isinstance(like, (int, float)) and not isinstance(like, bool):
    return type(like)(ast.literal_eval(text)) if isinstance(like, int) else float(text)
  if isinstance(like, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load_config_file(spec: str) -> ConfigDict:
  """Loads 'path/to/file.py[:arg]' by calling its get_config(arg)."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file {path!r} not found")
  module_spec = importlib.util.spec_from_file_location(f"vidgen_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} defines no get_config(arg)")
  return module.get_config(arg or None)


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
  """Applies ['--config.a.b=1', '--config.c', 'x', ...] to `config` (in place) and returns it."""
  items = list(overrides)
  i = 0
  while i < len(items):
    token = items[i]
    if not token.startswith("--config."):
      raise ValueError(f"unexpected argument {token!r}; overrides look like --config.train.lr=3e-4")
    key = token[len("--config."):]
    if "=" in key:
      key, value = key.split("=", 1)
    else:
      if i + 1 >= len(items):
        raise ValueError(f"override {token} has no value")
      i += 1
      value = items[i]
    _set_path(config, key, value)
    i += 1
  return config


def _set_path(config: ConfigDict, dotted: str, text: str):
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    if p not in node or not isinstance(node[p], ConfigDict):
      raise ValueError(f"override --config.{dotted}: no section {p!r}")
    node = node[p]
  if leaf not in node:
    raise ValueError(f"override --config.{dotted}: no field {leaf!r}; fields here: {', '.join(sorted(node))}")
  current = node[leaf]
  if current is None or isinstance(current, (list, tuple)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    if isinstance(current, tuple) and isinstance(value, list):
      value = tuple(value)
  else:
    try:
      value = _coerce(text, current)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"override --config.{dotted}={text!r}: expected a value of type "
                       f"{type(current).__name__} ({e})") from None
  with node.ignore_type():
    node[leaf] = value


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ConfigDict:
  return ConfigDict(_tuples(json.loads(text)))


def _tuples(d):
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


def diff(a: ConfigDict, b: ConfigDict, prefix="", added_off_ok: bool = False) -> list[str]:
  """Dotted keys whose values differ between two configs. With `added_off_ok`, a key that `a` (an older
  workdir's config) lacks and `b` holds at an off value ('', 0, False, None) is not a difference: options
  are added defaulting to off, which is the behaviour the older run had."""
  da, db = a.to_dict(), b.to_dict()
  out = []
  for k in sorted(set(da) | set(db)):
    va, vb = da.get(k), db.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += diff(ConfigDict(va), ConfigDict(vb), f"{prefix}{k}.", added_off_ok)
    elif added_off_ok and k not in da and not isinstance(vb, dict) and not vb:
      continue
    elif _tuples(va) != _tuples(vb):
      out.append(f"{prefix}{k}")
  return out


def moving_shapes_data(image_size: int, num_frames: int) -> ConfigDict:
  """The data block every family uses for the built-in moving-shapes set (see configs/vdm_shapes.py)."""
  d = ConfigDict()
  d.source = "moving_shapes"        # moving_shapes | folder
  d.folder = ""                     # for source=folder: GIF/MP4 files with same-named .txt captions
  d.image_size = image_size
  d.num_frames = num_frames
  d.num_examples = 1_000_000        # procedural: examples before the index wraps (an "epoch")
  d.split = "train"                 # train excludes the held-out combinations
  d.motions = ""                    # comma-separated motion names to train on only (e.g. a curriculum); "" = all
  d.motion_weights = ""             # "motion=w, ...": draw clips of a motion w times as often (default 1); "" = even
  d.pad = "zeros"
  d.seed = 0
  return d


def adamw_optim(lr: float, warmup_steps: int = 100) -> ConfigDict:
  """AdamW with warm-up and cosine decay, gradient clipping 1 and EMA 0.995 (train/state.make_optimizer)."""
  o = ConfigDict()
  o.lr = lr
  o.warmup_steps = warmup_steps
  o.decay = "cosine"                # cosine | constant (after warm-up)
  o.b1 = 0.9
  o.b2 = 0.99
  o.weight_decay = 0.0
  o.grad_clip = 1.0                 # global-norm clipping; 0 disables
  o.ema_decay = 0.995
  return o


def data_parallel_mesh(c: ConfigDict) -> ConfigDict:
  """Adds the default mesh (all devices on the data axis) and the fsdp sharding preset to config `c`."""
  c.mesh = ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.sharding = ConfigDict()
  c.sharding.preset = "fsdp"
  c.sharding.extra_rules = ()
  return c
