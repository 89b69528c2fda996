"""Reading phenaki-pytorch 0.5.0 checkpoints into per-module numpy state dicts (`read_checkpoint`).

The formats accepted, and what is dropped with a reason, are listed in `convert/phenaki_torch.py`.
"""
import dataclasses
import os
import pathlib
from typing import Mapping

import numpy as np

from vidgen_jax.convert import vdm_torch
from vidgen_jax.convert.errors import ConversionError

REFERENCE = "phenaki-pytorch"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_PARTS = ("cvivit", "maskgit", "critic")


@dataclasses.dataclass
class PhenakiCheckpoint:
  """A reference checkpoint split into its modules' state dicts (None where absent)."""
  cvivit: dict | None
  maskgit: dict | None
  critic: dict | None          # a TokenCritic's keys
  self_critic: dict | None     # a SelfCritic's own keys (to_pred.0.weight/bias); its MaskGit is `maskgit`
  kind: str                    # 'cvivit' | 'maskgit' | 'critic' | 'self_critic' | 'phenaki'
  source: str                  # 'state_dict' | 'phenaki_trainer' | 'ema:ema' | 'ema:model'
  step: int | None
  ignored: dict                # {torch key: why it was dropped} at this level (discr.*, vgg.*, copies)


def _load_file(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} not found")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    return load_file(str(path))
  if path.suffix in _TORCH_SUFFIXES:
    return vdm_torch._torch_load(path)
  raise ValueError(f"{path}: unsupported extension {path.suffix!r}; expected .safetensors or "
                   f"{', '.join(_TORCH_SUFFIXES)}")


def _unwrap(obj, which):
  """(flat state dict, source, step) from a state dict, a PhenakiTrainer checkpoint or an EMA wrapper."""
  if isinstance(obj.get("model"), Mapping):                      # PhenakiTrainer {'step', 'model', 'opt', ..}
    step = obj.get("step")
    return obj["model"], "phenaki_trainer", None if step is None else int(np.asarray(step))
  if any(k.startswith(("ema_model.", "online_model.")) for k in obj):   # ema-pytorch EMA(model).state_dict()
    prefix = {"ema": "ema_model.", "model": "online_model."}[which]
    inner = {k.removeprefix(prefix): v for k, v in obj.items() if k.startswith(prefix)}
    if not inner:
      raise ValueError(f"EMA checkpoint has no {prefix}* weights")
    step = obj.get("step")
    return inner, f"ema:{which}", None if step is None else int(np.asarray(step))
  return obj, "state_dict", None


def _bare_kind(sd):
  if "to_patch_emb_first_frame.2.weight" in sd:
    return "cvivit"
  if "to_pred.0.weight" in sd:
    return "self_critic"
  if "to_logits.0.weight" in sd:
    return "critic"
  if "token_emb.weight" in sd and "to_logits.weight" in sd:
    return "maskgit"
  raise ValueError(f"not a {REFERENCE} CViViT / MaskGit / TokenCritic / Phenaki state dict (first keys: "
                   f"{', '.join(list(sd)[:5])})")


def _split(sd, ignored):
  """{'cvivit': .., 'maskgit': .., 'critic': .., 'self_critic': ..} of a Phenaki or bare state dict."""
  sd = dict(sd)
  for k in list(sd):
    reason = _dropped_prefix(k.split(".", 1)[1] if k.startswith("cvivit.") else k)
    if reason:
      ignored[k] = reason
      del sd[k]
  if any(k.startswith(tuple(p + "." for p in _PARTS)) for k in sd):
    stray = sorted(k for k in sd if not k.startswith(tuple(p + "." for p in _PARTS)))
    if stray:
      raise ConversionError("a Phenaki state dict with keys outside cvivit./maskgit./critic.", unknown=stray)
    parts = {p: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")} or None for p in _PARTS}
    parts["self_critic"] = None
    if parts["critic"] and "to_pred.0.weight" in parts["critic"]:
      parts["self_critic"] = _self_critic(parts["critic"], parts["maskgit"], "critic.", ignored)
      parts["critic"] = None
    return parts, "phenaki"
  kind = _bare_kind(sd)
  parts = dict.fromkeys(_PARTS + ("self_critic",))
  if kind == "self_critic":
    parts["maskgit"] = {k.removeprefix("maskgit."): v for k, v in sd.items() if k.startswith("maskgit.")}
    parts["self_critic"] = _self_critic(sd, None, "", ignored)
  else:
    parts[kind] = sd
  return parts, kind


def _self_critic(critic, maskgit, prefix, ignored):
  """SelfCritic keys: to_pred.* kept; maskgit.* (the shared MaskGit saved again) checked equal and dropped."""
  own = {k: v for k, v in critic.items() if not k.startswith("maskgit.")}
  if maskgit is not None:
    copy = {k.removeprefix("maskgit."): v for k, v in critic.items() if k.startswith("maskgit.")}
    differ = sorted(f"{prefix}maskgit.{k}" for k in set(copy) | set(maskgit)
                    if k not in copy or k not in maskgit or not np.array_equal(copy[k], maskgit[k]))
    if differ:
      raise ConversionError("the SelfCritic's MaskGit differs from the Phenaki's (they are one shared module "
                            "in the reference)", mismatched=differ)
    for k in copy:
      ignored[f"{prefix}maskgit.{k}"] = "the SelfCritic's copy of the shared MaskGit (equal to maskgit.*)"
  unknown = sorted(f"{prefix}{k}" for k in own if k not in ("to_pred.0.weight", "to_pred.0.bias"))
  if unknown:
    raise ConversionError("unexpected SelfCritic keys", unknown=unknown)
  return own


def _dropped_prefix(key):
  if key.startswith("discr."):
    return "the GAN discriminator (training only; not converted)"
  if key.startswith("vgg."):
    return "the VGG16 of the perceptual loss (training only; not converted)"
  return None


def read_checkpoint(checkpoint, which: str = "ema") -> PhenakiCheckpoint:
  """Reads a reference checkpoint file (or an already loaded dict) into a `PhenakiCheckpoint`."""
  if which not in ("ema", "model"):
    raise ValueError(f"which={which!r}: choose 'ema' or 'model'")
  obj = _load_file(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
  if isinstance(obj, PhenakiCheckpoint):
    return obj
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a state dict or a trainer checkpoint dict, got {type(obj).__name__}")
  sd, source, step = _unwrap(obj, which)
  sd = {k: vdm_torch._to_numpy(v, k) for k, v in sd.items()}
  ignored = {}
  parts, kind = _split(sd, ignored)
  return PhenakiCheckpoint(**parts, kind=kind, source=source, step=step, ignored=ignored)


def load_state_dict(path, which: str = "ema") -> dict:
  """The flat reference state dict in `path` as {torch key: numpy array} (float tensors as float32), trainer
  and EMA wrappers removed (see `read_checkpoint`)."""
  obj = _load_file(path)
  sd, _, _ = _unwrap(obj, which)
  return {k: vdm_torch._to_numpy(v, k) for k, v in sd.items()}


def module_state_dict(state_dict, name):
  """The `name` module's state dict out of a path, a bare state dict or a Phenaki one."""
  ckpt = read_checkpoint(state_dict)
  sd = getattr(ckpt, name)
  if sd is None:
    raise ValueError(f"the checkpoint ({ckpt.kind}) holds no {name}")
  return sd


def video_from_torch_layout(x):
  """(B, C, T, H, W) -> (B, T, H, W, C); also (B, C, H, W) -> (B, H, W, C)."""
  return np.moveaxis(np.asarray(x), 1, -1)


def video_to_torch_layout(x):
  """(B, T, H, W, C) -> (B, C, T, H, W); also (B, H, W, C) -> (B, C, H, W)."""
  return np.moveaxis(np.asarray(x), -1, 1)
