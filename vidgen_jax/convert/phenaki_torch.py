"""Import phenaki-pytorch 0.5.0 (lucidrains) checkpoints: C-ViViT, MaskGit and TokenCritic into our Flax modules.

Three levels, each usable alone:

* `read_checkpoint(path_or_dict, which="ema")` -> `PhenakiCheckpoint`: a `.safetensors` file (no torch) or a
  `.pt`/`.pth`/`.bin`/`.ckpt` file (torch.load(weights_only=True); needs the `[torch]` extra) holding
    - a bare `CViViT`, `MaskGit`, `TokenCritic` (or `SelfCritic`) state dict,
    - a `Phenaki` state dict (prefixes `cvivit.`, `maskgit.`, `critic.`; with `self_token_critic=True` the
      critic is `critic.to_pred.*` plus `critic.maskgit.*`, a second copy of the shared MaskGit, checked
      equal and dropped),
    - the PhenakiTrainer checkpoint {'step', 'model', 'opt', 'scaler'} (its 'model', a Phenaki state dict),
    - an ema-pytorch wrapper state dict as CViViTTrainer saves it (`vae.N.ema.pt`: `ema_model.*` and
      `online_model.*`; `which` picks 'ema' (default) or 'model').
  `discr.*` (the GAN discriminator, training only) and `vgg.*` are dropped with a reason.
* `cvivit_from_torch(state_dict, **reference_kwargs)`, `maskgit_from_torch(...)`, `critic_from_torch(...)`
  -> (our Flax module, its variables), built from the reference constructor's arguments (the shapes fill in
  what they can: `infer_*_kwargs`) with `reference_compat=True`, which reproduces the reference's
  non-causal temporal PEG reshape (its checkpoints were trained with the leak; research/anchors_pytorch.md
  2.10-a) and self-attention keys/values from the un-normalised input.
* `convert_to_workdir(checkpoint, workdir, image_size=..., num_frames=...)`: a C-ViViT checkpoint becomes a
  family 'cvivit' workdir (`vidgen eval --workdir DIR`: reconstructions); a Phenaki checkpoint a family
  'phenaki' workdir (`vidgen sample`; `vidgen eval` with clips of at least 8 frames) whose frozen tokenizer is
  the converted C-ViViT, written as its own cvivit workdir in DIR/tokenizer. The CLI is
  `vidgen convert --from phenaki-pytorch`.

The checkpoint reading lives in `convert/phenaki_checkpoint.py`, the parameter mapping (its strictness, the
layouts and the parameter map) in `convert/phenaki_params.py`; this module writes workdirs and re-exports the
public functions of both.

Text: the reference encodes prompts with T5 v1.1 base (d_model 768), pad positions zeroed, the mask inferred
from non-zero embeddings. A phenaki workdir pairs the MaskGit's context width with one of our encoders
(384: minilm; 768: t5, which needs the model directory (--text-path), or bert if asked for); the text mask
comes from our tokenizer, so the same prompt gives the reference's logits only with the same encoder weights.
"""
import logging
import os
import pathlib
from typing import Mapping

import numpy as np

from vidgen_jax.convert import workdir as workdir_lib
from vidgen_jax.convert.errors import ConversionError  # noqa: F401  (re-exported)
from vidgen_jax.convert.phenaki_checkpoint import (  # noqa: F401  (re-exported)
    REFERENCE, PhenakiCheckpoint, load_state_dict, read_checkpoint, video_from_torch_layout,
    video_to_torch_layout)
from vidgen_jax.convert.phenaki_params import (  # noqa: F401  (re-exported)
    CRITIC_ARGS, CVIVIT_ARGS, MASKGIT_ARGS, REQUIRED, build_cvivit, critic_conversion, critic_from_torch,
    cvivit_conversion, cvivit_from_torch, infer_critic_kwargs, infer_cvivit_kwargs, infer_maskgit_kwargs,
    maskgit_conversion, maskgit_from_torch, supports_reference_compat)

log = logging.getLogger("vidgen.convert")

T5_BASE_DIM = 768            # google/t5-v1_1-base, Phenaki's default t5_name
MINILM_DIM = 384
# Phenaki.sample defaults: steps (the Phenaki constructor's), cond_scale, starting_temperature.
REFERENCE_SAMPLING = dict(steps=18, cond_scale=3.0, temperature=0.9)
TEXT_MAX_LENGTH = 256        # phenaki_pytorch.t5.MAX_LENGTH (T5 truncation)


# ----------------------------------------------------------------------------------------------------------
# Workdirs

def _base_config(name):
  from vidgen_jax import configs
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / name
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: it is the base config of a converted workdir")
  return configs.load_config_file(str(path))


def _jsonable(kw):
  out = {}
  for k, v in kw.items():
    if isinstance(v, tuple):
      v = list(v)
    if isinstance(v, Mapping):
      v = dict(v)
    if v is None or isinstance(v, (bool, int, float, str, list, dict)):
      out[k] = v
  return out


def cvivit_config(kw, *, num_frames, config=None):
  """A family 'cvivit' config whose model is the reference CViViT `kw` (resolved arguments)."""
  (hh, ww), (ph, pw) = kw["image_size"], kw["patch_size"]
  problems = []
  if hh != ww:
    problems.append(f"image_size={kw['image_size']}: a vidgen workdir has square frames (data.image_size)")
  if ph != pw:
    problems.append(f"patch_size={kw['patch_size']}: the cvivit family has square patches (model.patch_size)")
  if kw["channels"] != 3:
    problems.append(f"channels={kw['channels']}: a vidgen workdir models RGB video")
  if (num_frames - 1) % kw["temporal_patch_size"]:
    problems.append(f"num_frames={num_frames}: C-ViViT needs 1 + k * temporal_patch_size "
                    f"({kw['temporal_patch_size']}) frames")
  if problems:
    raise ValueError("; ".join(problems) + " (cvivit_from_torch() still converts this model)")
  c = config.copy_and_resolve_references() if config is not None else _base_config("cvivit_shapes.py")
  c.family = "cvivit"
  c.data.image_size, c.data.num_frames = int(hh), int(num_frames)
  m = c.model
  m.dim, m.patch_size, m.temporal_patch_size = int(kw["dim"]), int(ph), int(kw["temporal_patch_size"])
  m.spatial_depth, m.temporal_depth = int(kw["spatial_depth"]), int(kw["temporal_depth"])
  m.heads, m.dim_head = int(kw["heads"]), int(kw["dim_head"])
  m.quantizer = "lfq" if kw["lookup_free_quantization"] else "vq"
  m.codebook_size = int(kw["codebook_size"])
  m.reference_compat = True
  c.loss.gan_weight, c.loss.perceptual_weight, c.loss.perceptual_weights = 0.0, 0.0, ""
  return c


def _pick_text_encoder(dim_context, encoder, path):
  """(encoder, path) whose per-token features are dim_context wide, or a ValueError saying why none is."""
  if encoder is None:
    encoder = {MINILM_DIM: "minilm", T5_BASE_DIM: "t5"}.get(dim_context)
    if encoder is None:
      raise ValueError(f"dim_context={dim_context}: our text encoders give minilm {MINILM_DIM}, t5 (the "
                       f"reference's T5 v1.1 base: {T5_BASE_DIM}) or bert features of their model's width; pass "
                       "text_encoder= and text_path= for one of this width. maskgit_from_torch() runs the "
                       "model with your own text embeddings.")
  workdir_lib.check_text_encoder(f"dim_context={dim_context}", dim_context, encoder, path, "google/t5-v1_1-base")
  return encoder, str(path or "")


def phenaki_config(maskgit_kw, critic_kw, *, tokenizer_workdir, image_size, num_frames, text_encoder=None,
                   text_path="", text_max_length=None, steps=None, cond_scale=None, temperature=None,
                   config=None):
  """A family 'phenaki' config whose MaskGit (and critic) are the reference's."""
  if maskgit_kw["unconditional"]:
    raise ValueError("an unconditional MaskGit: the phenaki family is text-conditional (maskgit_from_torch() "
                     "still converts it)")
  if critic_kw is not None:
    differ = [k for k in ("dim", "heads", "dim_head") if critic_kw[k] != maskgit_kw[k]]
    if differ or not critic_kw["has_cross_attn"] or critic_kw["dim_context"] != maskgit_kw["dim_context"]:
      raise ValueError("the TokenCritic's " + (", ".join(differ) or "cross-attention") + " differs from the "
                       "MaskGit's; the phenaki family builds its critic with the MaskGit's dim, heads, dim_head "
                       "and text: convert without the critic (critic=False, --no-critic)")
  encoder, path = _pick_text_encoder(maskgit_kw["dim_context"], text_encoder, text_path)
  c = config.copy_and_resolve_references() if config is not None else _base_config("phenaki_shapes.py")
  c.family = "phenaki"
  c.tokenizer.workdir = str(pathlib.Path(tokenizer_workdir).absolute())
  c.data.image_size, c.data.num_frames = int(image_size), int(num_frames)
  m = c.model
  m.dim, m.depth, m.heads, m.dim_head = (int(maskgit_kw[k]) for k in ("dim", "depth", "heads", "dim_head"))
  m.critic = critic_kw is not None
  if critic_kw is not None:
    m.critic_depth = int(critic_kw["depth"])
  m.reference_compat = True
  c.text.encoder, c.text.path = encoder, path
  c.text.max_length = int(text_max_length or TEXT_MAX_LENGTH)
  c.train.mask_schedule = "cosine"
  s = c.sample
  s.steps = int(steps or REFERENCE_SAMPLING["steps"])
  s.cond_scale = float(REFERENCE_SAMPLING["cond_scale"] if cond_scale is None else cond_scale)
  s.temperature = float(REFERENCE_SAMPLING["temperature"] if temperature is None else temperature)
  return c


def _check_family_honours_compat(run, what):
  modules = [run.model] + [run.parts.get(k) for k in ("critic", "tokenizer")]
  if not all(getattr(mod, "reference_compat", False) for mod in modules if mod is not None):
    raise NotImplementedError(
        f"the {what} family builds its model without model.reference_compat, so the converted weights would "
        "run without the reference's layout quirks (train/cvivit.build_model, train/phenaki.build_components)")


def _write_cvivit_workdir(workdir, variables, kw, *, num_frames, step, devices, provenance):
  import jax.numpy as jnp
  from vidgen_jax.train import families
  from vidgen_jax.train import setup as setup_lib
  c = cvivit_config(kw, num_frames=num_frames)
  c.converted_from = provenance
  families.get("cvivit").validate(c, len(devices), 1)
  run = setup_lib.build_run(c, devices=devices)
  _check_family_honours_compat(run, "cvivit")
  workdir_lib.check_tree(run.abstract_state.params["tokenizer"], variables, "C-ViViT")
  frame = jnp.zeros((1, c.data.image_size, c.data.image_size, 3), jnp.float32)
  # The reference's discriminator (discr.*) is not converted: a fresh one, should training go on.
  rest = lambda key: {"discriminator": run.parts["discriminator"].init(key, frame)}
  workdir_lib.save_workdir(workdir, run, c, {"tokenizer": variables}, step, rest)
  return c


def convert_to_workdir(checkpoint, workdir, *, image_size, num_frames, which="ema", cvivit_kwargs=None,
                       maskgit_kwargs=None, critic_kwargs=None, critic=None, text_encoder=None, text_path="",
                       text_max_length=None, steps=None, cond_scale=None, temperature=None, step=None,
                       devices=None):
  """Writes a vidgen workdir from a phenaki-pytorch checkpoint.

  A C-ViViT checkpoint becomes a family 'cvivit' workdir (`vidgen eval --workdir DIR` reconstructs clips; the
  discriminator, which the reference's CViViT state dict may carry as discr.*, is not converted: a fresh one
  is initialised should training continue). A Phenaki checkpoint becomes a family 'phenaki' workdir: its
  C-ViViT is written as the cvivit workdir DIR/tokenizer (the phenaki config's tokenizer.workdir, copied into
  the phenaki state as its frozen tokenizer), its MaskGit (and TokenCritic) into DIR.

  Args:
    checkpoint: a file (or loaded dict) for `read_checkpoint` holding a CViViT or a whole Phenaki.
    workdir: a new directory (refused if it already holds a checkpoint).
    image_size: the reference's image_size (square: data.image_size); num_frames: the clip length the
      workdir samples/evaluates (1 + k * temporal_patch_size; a Phenaki's MaskGit needs max_seq_len >= its
      tokens: its pos_emb rows beyond them are never used and are not kept).
    which: 'ema' (default) or 'model' for an EMA wrapper checkpoint (CViViTTrainer's vae.N.ema.pt).
    cvivit_kwargs, maskgit_kwargs, critic_kwargs: reference constructor arguments; by default read off the
      weights (the C-ViViT's patch_size, not recoverable, is required).
    critic: None converts the checkpoint's TokenCritic if it has one; False leaves it out (needed for a
      SelfCritic, which the phenaki family does not have, or a critic shaped unlike the MaskGit).
    text_encoder, text_path, text_max_length: the encoder for the MaskGit's context width (default: 384
      minilm, 768 t5 with text_path); max length default 256, the reference's T5 truncation.
    steps, cond_scale, temperature: sampling defaults (default: the reference's 18, 3.0, 0.9).
    step: the step to record (default: the trainer checkpoint's, else 0).
    devices: where the state is assembled before saving (default: one local device).

  Returns:
    dict(workdir, step, config, kind, num_params, ignored (torch keys dropped and why), tokenizer_workdir).
  """
  import jax
  from vidgen_jax.train import families
  from vidgen_jax.train import setup as setup_lib

  workdir = pathlib.Path(workdir)
  workdir_lib.refuse_existing(workdir)
  ckpt = read_checkpoint(checkpoint, which)
  if ckpt.cvivit is None:
    raise ValueError(f"the checkpoint is a bare {ckpt.kind}: a workdir needs its C-ViViT too (a Phenaki "
                     "checkpoint, or convert the tokenizer first); maskgit_from_torch() / critic_from_torch() "
                     "convert it alone")
  devices = list(devices) if devices is not None else jax.local_devices()[:1]
  step = int(ckpt.step or 0) if step is None else int(step)
  ckpt_name = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<in memory>"
  given = dict(cvivit_kwargs or {})
  if given.get("image_size") not in (None, image_size):
    raise ValueError(f"image_size={image_size} but cvivit_kwargs has image_size={given['image_size']}")
  given["image_size"] = image_size
  _, cv_vars, cv_ignored, cv_kw = cvivit_conversion(ckpt.cvivit, given)
  ignored = dict(ckpt.ignored)
  ignored.update({f"cvivit.{k}" if ckpt.kind == "phenaki" else k: v for k, v in cv_ignored.items()})
  provenance = dict(reference=REFERENCE, checkpoint=ckpt_name, kind=ckpt.kind, source=ckpt.source, step=step,
                    cvivit_kwargs=_jsonable(cv_kw))
  num_params = sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(cv_vars))

  if ckpt.kind != "phenaki":
    c = _write_cvivit_workdir(workdir, cv_vars, cv_kw, num_frames=num_frames, step=step, devices=devices,
                              provenance=provenance)
    log.info("converted %s (%s, %d parameters) into %s at step %d", ckpt_name, ckpt.kind, num_params, workdir, step)
    return dict(workdir=workdir, step=step, config=c, kind=ckpt.kind, num_params=num_params, ignored=ignored,
                tokenizer_workdir=None)

  if ckpt.maskgit is None:
    raise ValueError("the Phenaki checkpoint has no maskgit.* weights")
  if ckpt.self_critic is not None and critic is not False:
    raise ValueError("the checkpoint's critic is a SelfCritic (self_token_critic=True), which the phenaki family "
                     "does not have: convert without it (critic=False, --no-critic)")
  use_critic = ckpt.critic is not None and critic is not False
  if critic and ckpt.critic is None:
    raise ValueError("critic=True but the checkpoint has no TokenCritic")
  _, mg_vars, mg_ignored, mg_kw = maskgit_conversion(ckpt.maskgit, dict(maskgit_kwargs or {}))
  ignored.update({f"maskgit.{k}": v for k, v in mg_ignored.items()})
  cr_vars, cr_kw = None, None
  if use_critic:
    _, cr_vars, cr_ignored, cr_kw = critic_conversion(ckpt.critic, dict(critic_kwargs or {}))
    ignored.update({f"critic.{k}": v for k, v in cr_ignored.items()})
  elif ckpt.critic is not None or ckpt.self_critic is not None:
    for k in ckpt.critic or ckpt.self_critic:
      ignored[f"critic.{k}"] = "critic=False: the critic is not converted"

  # Token grid and vocabulary as the phenaki family sees them.
  tokenizer = build_cvivit(**cv_kw)
  grid = (tokenizer.num_token_steps(num_frames),) + tokenizer.patch_grid
  seq = int(np.prod(grid))
  for name, kw in (("MaskGit", mg_kw), ("TokenCritic", cr_kw)):
    if kw is None:
      continue
    if kw["num_tokens"] != cv_kw["codebook_size"]:
      raise ValueError(f"{name} num_tokens={kw['num_tokens']} but the C-ViViT has {cv_kw['codebook_size']} codes: "
                       "the phenaki family's vocabulary is the tokenizer's codebook")
    if kw["max_seq_len"] < seq:
      raise ValueError(f"{name} max_seq_len={kw['max_seq_len']} < the {seq} tokens of {num_frames} frames "
                       f"(token grid {grid}): pass fewer num_frames")
  mg_vars = _truncate_positions(mg_vars, seq)
  if cr_vars is not None:
    cr_vars = _truncate_positions(cr_vars, seq)

  # Every check that needs no run before anything is written.
  cvivit_config(cv_kw, num_frames=num_frames)
  c = phenaki_config(mg_kw, cr_kw, tokenizer_workdir=workdir / "tokenizer", image_size=cv_kw["image_size"][0],
                     num_frames=num_frames, text_encoder=text_encoder, text_path=text_path,
                     text_max_length=text_max_length, steps=steps, cond_scale=cond_scale, temperature=temperature)
  families.get("phenaki").validate(c, len(devices), 1)
  workdir_lib.refuse_existing(workdir / "tokenizer")
  _write_cvivit_workdir(workdir / "tokenizer", cv_vars, cv_kw, num_frames=num_frames, step=step, devices=devices,
                        provenance=dict(provenance, kind="phenaki:cvivit"))
  provenance.update(maskgit_kwargs=_jsonable(mg_kw), critic_kwargs=_jsonable(cr_kw) if cr_kw else None,
                    positions_kept=seq)
  c.converted_from = provenance
  width = workdir_lib.text_width(c.text.encoder, c.text.path)
  run = setup_lib.build_run(c, text_encoder=workdir_lib.TextDim(width), devices=devices)
  _check_family_honours_compat(run, "phenaki")
  replace = {"maskgit": mg_vars}
  workdir_lib.check_tree(run.abstract_state.params["maskgit"], mg_vars, "MaskGit")
  if cr_vars is not None:
    workdir_lib.check_tree(run.abstract_state.params["critic"], cr_vars, "TokenCritic")
    replace["critic"] = cr_vars
  # The frozen tokenizer: the tokenizer workdir's weights as the run restored them (on their own devices, so
  # fetched to the host), an argument of the state's jit rather than a constant baked into it.
  tokenizer = jax.device_get(run.parts["tokenizer_variables"])
  workdir_lib.save_workdir(workdir, run, c, {**replace, "tokenizer": tokenizer}, step)
  num_params += sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(replace))
  log.info("converted %s (phenaki, %d parameters) into %s (tokenizer %s) at step %d", ckpt_name, num_params,
           workdir, workdir / "tokenizer", step)
  return dict(workdir=workdir, step=step, config=c, kind=ckpt.kind, num_params=num_params, ignored=ignored,
              tokenizer_workdir=workdir / "tokenizer")


def _truncate_positions(variables, seq):
  """Keeps the first `seq` rows of the learned position table (positions >= seq are never looked up)."""
  params = dict(variables["params"])
  trunk = dict(params["trunk"])
  trunk["pos_emb"] = {"embedding": variables["params"]["trunk"]["pos_emb"]["embedding"][:seq]}
  params["trunk"] = trunk
  return {**variables, "params": params}
