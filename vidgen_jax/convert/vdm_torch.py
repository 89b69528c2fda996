"""Import video-diffusion-pytorch checkpoints (lucidrains, 0.7.0 and the older GroupNorm layout) into Flax.

Three levels, each usable alone:

* `load_state_dict(path, which="ema")`: a `.pt`/`.pth` file (torch.load, needs the `[torch]` extra) or a
  `.safetensors` file (no torch) holding a bare `Unet3D` state dict, a `GaussianDiffusion` state dict
  (`denoise_fn.` prefix; its schedule buffers are dropped) or the reference Trainer's checkpoint
  {'step', 'model', 'ema', 'scaler'} (`which` picks 'ema' or 'model') -> {torch key: float32 numpy array}.
* `unet_from_torch(state_dict, **reference_kwargs)` -> (our Flax `Unet3D`, its variables {'params': ...}),
  built from the reference constructor's arguments (`infer_reference_kwargs` reads them off a state dict).
* `convert_to_workdir(checkpoint, workdir, image_size=..., num_frames=...)`: a workdir that
  `vidgen sample --workdir DIR` (and `load_generator`) uses: config.json + an Orbax checkpoint whose params
  and EMA params are the converted weights. The CLI is `vidgen convert --from video-diffusion-pytorch`.

Layouts. The reference runs on (B, C, F, H, W) video; our U-Net on channels-last (B, T, H, W, C) video in
[-1, 1] (the diffusion space, where the reference's GaussianDiffusion also runs the U-Net), an int time
index (B,) in [0, timesteps - 1] and, when conditional, cond (B, cond_dim). `video_to_torch_layout` /
`video_from_torch_layout` transpose between the two. It predicts eps, like the reference.

Older checkpoints. Before 0.7.0 every `Block` used nn.GroupNorm(resnet_groups=8, C) (keys
`...blockN.norm.weight` / `.bias`) where 0.7.0 has an RMSNorm (`...norm.gamma`). GroupNorm normalises each
channel group over the group's channels and every frame and pixel of the clip, with a bias; our
ChannelRMSNorm normalises each position over its channels with a gain only, so no choice of gain makes one
equal the other. The old layout therefore builds the U-Net with `resnet_groups` (an exact GroupNorm path,
`unet3d_blocks.Block(groups=...)`; flax `scale`/`bias`), checked against 0.6.2's own output. The group count
is not stored in a state dict: it is the reference's default 8 unless `resnet_groups=` says otherwise.

What the reference's text conditioning maps to: cond is a pooled sentence vector concatenated to the time
embedding (FiLM only, no cross-attention), BERT-base-cased masked mean (cond_dim 768) in the reference.
`convert_to_workdir` pairs cond_dim with our pooled text encoders (minilm 384, bert 768; t5 by its width)
and turns cross-attention off; the pooled vector our pipeline feeds is the masked mean over every real token
including [CLS], where the reference's `bert_embed` leaves [CLS] out, so text-conditional outputs are close
to, not bit-equal with, the reference's for the same prompt. Unconditional checkpoints (all the reference
Trainer can make) become `model.unconditional=True`: prompts then only set how many videos are drawn.
"""
import dataclasses
import logging
import os
import pathlib
import re
from typing import Mapping

import numpy as np

from vidgen_jax.convert import workdir as workdir_lib
from vidgen_jax.convert.errors import ConversionError

log = logging.getLogger("vidgen.convert")

REFERENCE = "video-diffusion-pytorch"
BERT_MODEL_DIM = 768   # video_diffusion_pytorch.text.BERT_MODEL_DIM (use_bert_text_cond)
DEFAULT_RESNET_GROUPS = 8   # Unet3D(resnet_groups=8) before 0.7.0
DEFAULT_TIMESTEPS = 1000    # GaussianDiffusion(timesteps=1000)
# GaussianDiffusion's registered buffers: all recomputable from the cosine schedule.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
# Unet3D.__init__ arguments of the reference (0.7.0, plus 0.6.x's resnet_groups) and their defaults.
REFERENCE_DEFAULTS = dict(
    cond_dim=None, out_dim=None, dim_mults=(1, 2, 4, 8), channels=3, attn_heads=8, attn_dim_head=32,
    use_bert_text_cond=False, init_dim=None, init_kernel_size=7, use_sparse_linear_attn=True,
    block_type="resnet", resnet_groups=None)
_DIFFUSION_PREFIX = "denoise_fn."
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


# ----------------------------------------------------------------------------------------------------------
# Reading checkpoints

@dataclasses.dataclass
class TorchCheckpoint:
  """A reference checkpoint split into the U-Net's state dict and what came with it."""
  unet: dict            # Unet3D keys (no `denoise_fn.` prefix) -> float32/int numpy arrays
  buffers: dict         # GaussianDiffusion schedule buffers, when the file had them
  step: int | None      # the Trainer's step, when the file was a Trainer checkpoint
  kind: str             # 'unet' | 'diffusion' | 'trainer:ema' | 'trainer:model'


def _to_numpy(value, key):
  if hasattr(value, "detach"):   # a torch tensor
    value = value.detach().cpu()
    if value.is_floating_point() and str(value.dtype) != "torch.float32":
      value = value.float()
    return value.numpy()
  if isinstance(value, np.ndarray) or np.isscalar(value):
    arr = np.asarray(value)
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
      arr = arr.astype(np.float32)
    return arr
  raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")


def _torch_load(path):
  try:
    import torch  # lazily: the converter itself only needs numpy
  except ImportError as e:
    raise ModuleNotFoundError(
        f"reading {path} needs PyTorch: pip install 'vidgen_jax[torch]' (or convert the file to .safetensors "
        "where torch is installed: safetensors.torch.save_file(state_dict, 'model.safetensors'))") from e
  return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(checkpoint, which: str = "ema") -> TorchCheckpoint:
  """Reads a checkpoint file (or an already loaded dict) into a `TorchCheckpoint`.

  `which` selects the Trainer checkpoint's 'ema' (default, what the reference samples with) or 'model'
  weights; it is ignored for plain state dicts.
  """
  if which not in ("ema", "model"):
    raise ValueError(f"which={which!r}: choose 'ema' or 'model'")
  obj = checkpoint
  if isinstance(checkpoint, (str, os.PathLike)):
    path = pathlib.Path(checkpoint)
    if not path.is_file():
      raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
      from safetensors.numpy import load_file
      obj = load_file(str(path))
    elif path.suffix in _TORCH_SUFFIXES:
      obj = _torch_load(path)
    else:
      raise ValueError(f"{path}: unsupported extension {path.suffix!r}; expected .safetensors or "
                       f"{', '.join(_TORCH_SUFFIXES)}")
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a state dict or a Trainer checkpoint dict, got {type(obj).__name__}")

  step, kind = None, None
  if any(isinstance(obj.get(k), Mapping) for k in ("ema", "model")):   # Trainer: {'step', 'model', 'ema', ..}
    if not isinstance(obj.get(which), Mapping):
      raise ValueError(f"Trainer checkpoint has no {which!r} weights (keys: {sorted(obj)})")
    step = int(obj["step"]) if obj.get("step") is not None else None
    obj, kind = obj[which], f"trainer:{which}"

  state = {k: _to_numpy(v, k) for k, v in obj.items()}
  if any(k.startswith(_DIFFUSION_PREFIX) for k in state):
    kind = kind or "diffusion"
    buffers = {k: v for k, v in state.items() if k in SCHEDULE_BUFFERS}
    unet = {k.removeprefix(_DIFFUSION_PREFIX): v for k, v in state.items() if k not in SCHEDULE_BUFFERS}
  else:
    kind, buffers, unet = kind or "unet", {}, state
  return TorchCheckpoint(unet=unet, buffers=buffers, step=step, kind=kind)


def load_state_dict(path, which: str = "ema") -> dict:
  """The reference Unet3D state dict in `path` as {torch key: numpy array} (float tensors as float32).

  Accepts `.safetensors` (read with safetensors.numpy, no torch) and `.pt`/`.pth`/`.bin`/`.ckpt` (torch.load
  with weights_only=True; needs the `[torch]` extra) holding a bare Unet3D state dict, a GaussianDiffusion
  state dict (`denoise_fn.` prefix removed, schedule buffers dropped) or a Trainer checkpoint
  ({'step', 'model', 'ema', 'scaler'}: `which`='ema' (default) or 'model').
  """
  return read_checkpoint(path, which).unet


# ----------------------------------------------------------------------------------------------------------
# Building the Flax U-Net

def _levels(state_dict):
  return sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"downs\.(\d+)\.", k))})


def _require(state_dict, key):
  if key not in state_dict:
    raise ValueError(f"not a {REFERENCE} Unet3D state dict: no {key!r} "
                     f"(first keys: {', '.join(list(state_dict)[:5])})")
  return state_dict[key]


def infer_reference_kwargs(state_dict) -> dict:
  """The reference `Unet3D(...)` arguments a state dict was made with, read off its shapes.

  Everything is recoverable except 0.6.x's `resnet_groups` (GroupNorm has a per-channel weight only), which
  is reported as the reference default 8 for old-layout checkpoints; pass the real value if it differed.
  """
  sd = {k.removeprefix(_DIFFUSION_PREFIX): v for k, v in state_dict.items()}
  init = _require(sd, "init_conv.weight")
  dim, channels, kernel = int(init.shape[0]), int(init.shape[1]), int(init.shape[-1])
  heads = int(_require(sd, "time_rel_pos_bias.relative_attention_bias.weight").shape[1])
  dim_head = int(_require(sd, "init_temporal_attn.fn.fn.fn.to_qkv.weight").shape[0]) // (3 * heads)
  levels = _levels(sd)
  if not levels:
    raise ValueError(f"not a {REFERENCE} Unet3D state dict: no downs.* keys")
  mults = tuple(int(_require(sd, f"downs.{i}.0.block1.proj.weight").shape[0]) // dim for i in levels)
  out_dim = int(_require(sd, "final_conv.1.weight").shape[0])
  kwargs = dict(dim=dim, dim_mults=mults, channels=channels, attn_heads=heads, attn_dim_head=dim_head,
                init_kernel_size=kernel, use_sparse_linear_attn=any(k.startswith("downs.0.2.") for k in sd),
                cond_dim=int(sd["null_cond_emb"].shape[-1]) if "null_cond_emb" in sd else None,
                out_dim=out_dim)
  if any(k.endswith(".norm.weight") for k in sd):
    kwargs["resnet_groups"] = DEFAULT_RESNET_GROUPS
  return kwargs


def _old_layout(state_dict):
  return any(re.search(r"block[12]\.norm\.weight$", k) for k in state_dict)


def _resolve_kwargs(state_dict, reference_kwargs):
  unknown = sorted(set(reference_kwargs) - set(REFERENCE_DEFAULTS) - {"dim"})
  if unknown:
    raise ValueError(f"Unet3D argument(s) {', '.join(unknown)} unknown; the reference's are dim, "
                     f"{', '.join(REFERENCE_DEFAULTS)}")
  if "dim" not in reference_kwargs:
    raise ValueError("dim is required (the reference's first Unet3D argument)")
  kw = dict(REFERENCE_DEFAULTS, **reference_kwargs)
  if kw["use_bert_text_cond"]:
    if kw["cond_dim"] not in (None, BERT_MODEL_DIM):
      log.warning("use_bert_text_cond=True overrides cond_dim=%s with %d, as in the reference",
                  kw["cond_dim"], BERT_MODEL_DIM)
    kw["cond_dim"] = BERT_MODEL_DIM
  if kw["init_dim"] not in (None, kw["dim"]):
    raise ValueError(f"init_dim={kw['init_dim']} != dim={kw['dim']}: the reference itself crashes on such a "
                     "model (final_conv expects dim * 2 channels), so no checkpoint of it can exist")
  if not isinstance(kw["init_kernel_size"], int) or kw["init_kernel_size"] % 2 != 1:
    raise ValueError(f"init_kernel_size={kw['init_kernel_size']!r} must be an odd int (the reference asserts it)")
  if _old_layout(state_dict):
    if kw["resnet_groups"] is None:
      kw["resnet_groups"] = DEFAULT_RESNET_GROUPS
  elif kw["resnet_groups"] is not None and any(k.endswith("norm.gamma") for k in state_dict):
    raise ValueError(f"resnet_groups={kw['resnet_groups']} asks for the pre-0.7.0 GroupNorm blocks, but the "
                     "state dict has 0.7.0's RMSNorm `block*.norm.gamma` keys: leave resnet_groups unset")
  groups = kw["resnet_groups"]
  if groups:
    widths = sorted({kw["dim"]} | {kw["dim"] * m for m in kw["dim_mults"]})
    if any(w % groups for w in widths):
      raise ValueError(f"resnet_groups={groups} does not divide the block widths {widths} (GroupNorm needs it "
                       "to; the group count is not stored in a checkpoint: pass the one the model was built with)")
  # block_type: unused by the reference (any value builds the same ResNet blocks), so nothing to honour.
  return kw


def build_unet(**reference_kwargs):
  """Our Flax `Unet3D` for the reference's constructor arguments (no text cross-attention, float32)."""
  from vidgen_jax.models.unet3d import Unet3D
  kw = _resolve_kwargs({}, reference_kwargs)
  return Unet3D(dim=kw["dim"], cond_dim=kw["cond_dim"], out_dim=kw["out_dim"], dim_mults=tuple(kw["dim_mults"]),
                channels=kw["channels"], attn_heads=kw["attn_heads"], attn_dim_head=kw["attn_dim_head"],
                init_dim=kw["init_dim"], init_kernel_size=kw["init_kernel_size"],
                use_sparse_linear_attn=bool(kw["use_sparse_linear_attn"]), resnet_groups=kw["resnet_groups"])


def abstract_variables(module):
  """ShapeDtypeStructs of `module.init`'s variables (unboxed), without running or compiling anything."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  side = 2 ** (len(module.dim_mults) - 1)
  x = jax.ShapeDtypeStruct((1, 1, side, side, module.channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  cond = None if module.cond_dim is None else jax.ShapeDtypeStruct((1, module.cond_dim), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), x, t, cond))


def _check_rotary(key, value, dim_head):
  from vidgen_jax.layers import position
  rotary_dim = min(32, dim_head)
  expected = np.asarray(position.rotary_frequencies(rotary_dim))
  if value.shape != expected.shape:
    return f"{key} {tuple(value.shape)}: rotary frequencies for dim_head={dim_head} are {expected.shape}"
  if not np.allclose(value, expected, rtol=1e-5, atol=0):
    return (f"{key}: rotary frequencies differ from theta=10000, dim={rotary_dim} (the only setting the "
            "reference uses), which our attention recomputes")
  return None


def params_from_torch(state_dict, module) -> dict:
  """Maps a reference state dict onto `module`'s variables {'params': ...}, checking every key and shape.

  Raises `ConversionError` naming unknown torch keys, torch keys the module has no parameter for, shape
  mismatches and module parameters the state dict does not fill.
  """
  from flax import traverse_util
  from vidgen_jax.models.unet3d import convert_torch_value, torch_key_to_flax
  target = traverse_util.flatten_dict(abstract_variables(module)["params"])
  filled, claimed, unknown, unexpected, mismatched = {}, set(), [], [], []
  for key, value in state_dict.items():
    value = np.asarray(value)
    try:
      path, rule = torch_key_to_flax(key)
    except KeyError:
      unknown.append(key)
      continue
    if rule == "drop":
      problem = _check_rotary(key, value, module.attn_dim_head)
      if problem:
        mismatched.append(problem)
      continue
    name = "/".join(path)
    if path not in target:
      unexpected.append(f"{key} -> {name}")
      continue
    claimed.add(path)   # reported as a mismatch below if it does not fit, not as missing
    try:
      w = convert_torch_value(rule, value)
    except (ValueError, IndexError) as e:
      mismatched.append(f"{key} {tuple(value.shape)}: cannot apply rule {rule!r} ({e})")
      continue
    if w.shape != target[path].shape:
      mismatched.append(f"{key} {tuple(value.shape)} -> {name} {tuple(w.shape)}, but the U-Net has "
                        f"{tuple(target[path].shape)}")
      continue
    if path in filled:
      mismatched.append(f"{key}: {name} is already filled by another key")
      continue
    filled[path] = np.ascontiguousarray(w, dtype=target[path].dtype)
  missing = ["/".join(p) for p in target if p not in claimed]
  if unknown or unexpected or mismatched or missing:
    raise ConversionError(f"the {REFERENCE} state dict does not fit {_describe(module)}",
                          unknown=unknown, unexpected=unexpected, mismatched=mismatched, missing=missing)
  return {"params": traverse_util.unflatten_dict(filled)}


def _describe(module):
  fields = ("dim", "cond_dim", "out_dim", "dim_mults", "channels", "attn_heads", "attn_dim_head",
            "init_kernel_size", "use_sparse_linear_attn", "resnet_groups")
  return "Unet3D(" + ", ".join(f"{f}={getattr(module, f)!r}" for f in fields) + ")"


def unet_from_torch(state_dict, **reference_kwargs):
  """Builds our Flax `Unet3D` from the reference's constructor arguments and fills it from `state_dict`.

  Args:
    state_dict: {torch key: array} of a reference Unet3D (with or without GaussianDiffusion's `denoise_fn.`
      prefix; schedule buffers are ignored), or a path for `load_state_dict`.
    **reference_kwargs: the arguments the reference model was built with, under the reference's names:
      dim (required), cond_dim, out_dim, dim_mults, channels, attn_heads, attn_dim_head, use_bert_text_cond
      (cond_dim = 768), init_dim (must equal dim), init_kernel_size (odd), use_sparse_linear_attn,
      block_type (unused by the reference; ignored) and, for pre-0.7.0 GroupNorm checkpoints,
      resnet_groups (default 8 when the state dict has the old `norm.weight`/`norm.bias` layout).
      `infer_reference_kwargs(state_dict)` recovers them from a state dict. Any other name is rejected.

  Returns:
    (module, variables): `module.apply(variables, x, time, cond)` maps
      x     float (B, T, H, W, channels), channels-last video in [-1, 1] (torch: (B, C, T, H, W)),
      time  int (B,), diffusion step indices in [0, timesteps - 1] (fed raw to the sinusoid, as in torch),
      cond  float (B, cond_dim), only and always when cond_dim is set,
    to the predicted noise eps (B, T, H, W, out_dim); `null_cond=` (B,) bool selects the learned null
    condition (the reference's null_cond_prob=1) and `focus_present_mask=` (B,) bool is as in the reference.
    H and W must be divisible by 2 ** (len(dim_mults) - 1). `variables` is {'params': nested dict of float32
    numpy arrays}, with exactly the tree of `module.init`: every parameter is filled and every torch key is
    used (the rotary `freqs` are checked, then recomputed), or a `ConversionError` lists the offending keys.
  """
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = load_state_dict(state_dict)
  sd = {k.removeprefix(_DIFFUSION_PREFIX): v for k, v in state_dict.items() if k not in SCHEDULE_BUFFERS}
  kw = _resolve_kwargs(sd, reference_kwargs)
  module = build_unet(**kw)
  return module, params_from_torch(sd, module)


def video_from_torch_layout(x):
  """(B, C, T, H, W) -> (B, T, H, W, C)."""
  return np.moveaxis(np.asarray(x), 1, -1)


def video_to_torch_layout(x):
  """(B, T, H, W, C) -> (B, C, T, H, W)."""
  return np.moveaxis(np.asarray(x), -1, 1)


# ----------------------------------------------------------------------------------------------------------
# A sampling workdir

def _pick_text_encoder(cond_dim, encoder, path):
  """(encoder, path, width) that can feed a cond_dim-wide pooled vector, or a ValueError saying why not."""
  if cond_dim is None:
    return encoder or "minilm", path or "", None
  if encoder is None:
    encoder = {384: "minilm", BERT_MODEL_DIM: "bert"}.get(cond_dim)
    if encoder is None:
      raise ValueError(
          f"cond_dim={cond_dim}: our pooled text encoders give minilm 384 and bert {BERT_MODEL_DIM} features "
          f"(the reference's BERT-base) or a t5 model's d_model (pass text_encoder='t5' with its directory); "
          "nothing here produces this width. unet_from_torch() runs the U-Net with your own cond vectors.")
  width = workdir_lib.check_text_encoder(f"cond_dim={cond_dim}", cond_dim, encoder, path, "bert-base-cased")
  return encoder, path or "", width


def _base_config():
  from vidgen_jax import configs
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "vdm_shapes.py"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: pass config= (a video-diffusion ConfigDict) to start from")
  return configs.load_config_file(str(path))


def _set_if_present(section, key, value):
  if key in section:
    section[key] = value


def reference_config(reference_kwargs, *, image_size, num_frames, timesteps=DEFAULT_TIMESTEPS, loss_type="l1",
                     text_encoder=None, text_path="", text_max_length=None, sampler=None, steps=None,
                     cond_scale=1.0, config=None):
  """A video-diffusion config (family 'vdm') whose model and diffusion are the reference's.

  The model is the reference U-Net (patch 1, no cross-attention or other additions, float32), eps
  prediction on the cosine schedule with `timesteps` steps, `loss_type` as GaussianDiffusion's (for further
  training). Sampling defaults to the reference's guidance scale 1; the sampler stays the base config's
  (DDIM, 50 steps) unless `sampler` ('ddpm' is the reference's ancestral sampler over all steps) / `steps`.
  """
  kw = dict(REFERENCE_DEFAULTS, **reference_kwargs)
  if kw["use_bert_text_cond"]:
    kw["cond_dim"] = BERT_MODEL_DIM
  out_dim = kw["out_dim"] or kw["channels"]
  if kw["channels"] != 3 or out_dim != 3:
    raise ValueError(f"channels={kw['channels']}, out_dim={out_dim}: a vidgen workdir models RGB video "
                     "(3 in, 3 out); unet_from_torch() still converts this U-Net")
  levels = len(kw["dim_mults"])
  if image_size % 2 ** (levels - 1):
    raise ValueError(f"image_size={image_size} must be divisible by {2 ** (levels - 1)} for "
                     f"dim_mults={tuple(kw['dim_mults'])}")
  encoder, path, _ = _pick_text_encoder(kw["cond_dim"], text_encoder, text_path)
  c = config.copy_and_resolve_references() if config is not None else _base_config()
  c.family = "vdm"
  c.data.image_size, c.data.num_frames = int(image_size), int(num_frames)
  m = c.model
  m.dim, m.dim_mults = int(kw["dim"]), tuple(int(v) for v in kw["dim_mults"])
  m.attn_heads, m.attn_dim_head = int(kw["attn_heads"]), int(kw["attn_dim_head"])
  m.patch_size, m.init_kernel_size = 1, int(kw["init_kernel_size"])
  m.use_sparse_linear_attn, m.cross_attention, m.remat = bool(kw["use_sparse_linear_attn"]), False, False
  for addition in ("max_frames_embedding", "text_cond_mlp", "frame_cond_mlp", "position_features", "temporal_conv"):
    _set_if_present(m, addition, 0)
  _set_if_present(m, "input_skip", False)
  m.unconditional = kw["cond_dim"] is None
  m.resnet_groups = int(kw["resnet_groups"] or 0)
  d = c.diffusion
  d.timesteps, d.schedule, d.prediction, d.loss = int(timesteps), "cosine", "eps", loss_type
  d.prob_focus_present = 0.0
  _set_if_present(d, "schedule_shift", 1.0)
  c.text.encoder, c.text.path = encoder, str(path)
  if text_max_length:
    c.text.max_length = int(text_max_length)
  c.train.compute_dtype = "float32"
  s = c.sample
  s.cond_scale, s.clip_denoised = float(cond_scale), True
  if sampler:
    s.sampler = sampler
  s.steps = min(int(steps or s.steps), int(timesteps))
  return c


def _check_schedule(sched, buffers):
  """The checkpoint's schedule buffers (when it has them) must be the ones our config recomputes."""
  for name, value in buffers.items():
    ours = np.asarray(getattr(sched, name))
    if value.shape != ours.shape or not np.allclose(value, ours, rtol=1e-5, atol=1e-7):
      raise ValueError(f"the checkpoint's {name} differs from the cosine schedule with {ours.shape[0]} steps "
                       "(the reference's only schedule): not a video-diffusion-pytorch GaussianDiffusion?")


def convert_to_workdir(checkpoint, workdir, *, image_size, num_frames, reference_kwargs=None, which="ema",
                       timesteps=None, loss_type="l1", text_encoder=None, text_path="", text_max_length=None,
                       sampler=None, steps=None, cond_scale=1.0, step=None, config=None, devices=None):
  """Writes a sampling-ready vidgen workdir from a video-diffusion-pytorch checkpoint.

  Args:
    checkpoint: a file for `read_checkpoint` (or an already loaded state dict / Trainer dict).
    workdir: a new directory (refused if it already holds a checkpoint).
    image_size, num_frames: GaussianDiffusion's (not stored in a state dict).
    reference_kwargs: Unet3D arguments; by default read off the state dict (`infer_reference_kwargs`),
      given ones take precedence (and are checked against the weights).
    which: a Trainer checkpoint's 'ema' (default) or 'model' weights.
    timesteps: GaussianDiffusion's; by default the length of the checkpoint's schedule buffers, else 1000.
    loss_type: GaussianDiffusion's 'l1' (its default) or 'l2'; only used if training continues.
    text_encoder, text_path, text_max_length: the text encoder for a conditional checkpoint; by default
      chosen by cond_dim (384 minilm, 768 bert, which needs text_path). Unconditional: ignored.
    sampler, steps, cond_scale: sampling defaults stored in the config.
    step: the checkpoint step to write; by default the Trainer's step, else 0.
    config: the ConfigDict to start from (default configs/vdm_shapes.py); model/diffusion are replaced.
    devices: where the state is assembled before saving; default one local device (the weights are small
      next to a device, the checkpoint restores onto any mesh, and saving an 8-way sharded tree costs Orbax
      a slicing program per array).

  Returns:
    dict(workdir, step, config, reference_kwargs, num_params, kind).
  """
  import jax
  from vidgen_jax.train import setup as setup_lib
  from vidgen_jax.train import validation
  from vidgen_jax.train import vdm

  ckpt = read_checkpoint(checkpoint, which)
  kwargs = infer_reference_kwargs(ckpt.unet)
  kwargs.update(reference_kwargs or {})
  module, variables = unet_from_torch(ckpt.unet, **kwargs)
  kwargs = _resolve_kwargs(ckpt.unet, kwargs)
  if ckpt.buffers and timesteps is not None and len(ckpt.buffers.get("betas", ())) not in (0, timesteps):
    raise ValueError(f"timesteps={timesteps} but the checkpoint's schedule has {len(ckpt.buffers['betas'])}")
  if timesteps is None:
    timesteps = len(ckpt.buffers["betas"]) if "betas" in ckpt.buffers else DEFAULT_TIMESTEPS
  step = int(ckpt.step or 0) if step is None else int(step)

  c = reference_config(kwargs, image_size=image_size, num_frames=num_frames, timesteps=timesteps,
                       loss_type=loss_type, text_encoder=text_encoder, text_path=text_path,
                       text_max_length=text_max_length, sampler=sampler, steps=steps, cond_scale=cond_scale,
                       config=config)
  c.converted_from = dict(reference=REFERENCE, checkpoint=str(checkpoint) if isinstance(
      checkpoint, (str, os.PathLike)) else "<in memory>", kind=ckpt.kind, step=step,
      reference_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
  devices = list(devices) if devices is not None else jax.local_devices()[:1]
  validation.validate_vdm(c, len(devices), 1)
  _check_schedule(vdm.build_schedule(c), ckpt.buffers)

  workdir = pathlib.Path(workdir)
  workdir_lib.refuse_existing(workdir)
  text_dim = kwargs["cond_dim"] or 384
  run = setup_lib.build_run(c, text_encoder=workdir_lib.TextDim(text_dim), devices=devices)
  workdir_lib.check_tree(run.abstract_state.params, variables, "model")
  workdir_lib.save_workdir(workdir, run, c, variables, step)
  num_params = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables))
  log.info("converted %s (%s, %d parameters) into %s at step %d", checkpoint if isinstance(
      checkpoint, (str, os.PathLike)) else "state dict", ckpt.kind, num_params, workdir, step)
  return dict(workdir=workdir, step=step, config=c, reference_kwargs=kwargs, num_params=num_params,
              kind=ckpt.kind)
