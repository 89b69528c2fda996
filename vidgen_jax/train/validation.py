"""Start-up validation of a video-diffusion config: every mistake reported at once, one line each."""
import math

from vidgen_jax.data import moving_shapes
from vidgen_jax.diffusion import losses
from vidgen_jax.parallel.mesh import resolve_mesh_shape
from vidgen_jax.parallel.sharding import SHARDING_PRESETS
from vidgen_jax.train import state as state_lib


class ConfigError(ValueError):
  """A config that cannot run; the message lists every problem found."""

  def __init__(self, problems):
    self.problems = list(problems)
    super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _choice(problems, name, value, allowed):
  if value not in allowed:
    problems.append(f"{name}={value!r}: must be one of {', '.join(map(str, allowed))}")


def _positive(problems, name, value, allow_zero=False):
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
    problems.append(f"{name}={value!r}: must be a {'non-negative' if allow_zero else 'positive'} number")


def dtype_problems(c) -> list[str]:
  """train.compute_dtype, checked for every family."""
  p = []
  _choice(p, "train.compute_dtype", c.train.get("compute_dtype", "float32"), tuple(state_lib.COMPUTE_DTYPES))
  return p


def vdm_problems(c, num_devices: int, num_processes: int = 1) -> list[str]:
  """Returns the list of problems with a video-diffusion config (empty when it can run)."""
  p = []
  _choice(p, "family", c.get("family"), ("vdm",))
  d, m, t, o, s, df = c.data, c.model, c.train, c.optim, c.sample, c.diffusion
  _choice(p, "data.source", d.source, ("moving_shapes", "folder"))
  if d.source == "folder" and not d.folder:
    p.append("data.folder is empty but data.source='folder': give the folder of GIF/MP4 files with captions")
  _choice(p, "data.split", d.split, ("train", "heldout", "all"))
  try:
    moving_shapes.parse_motions(d.get("motions") or None)
  except ValueError as e:
    p.append(f"data.motions: {e}")
  try:
    moving_shapes.parse_motion_weights(d.get("motion_weights") or None)
  except ValueError as e:
    p.append(f"data.motion_weights: {e}")
  reversal = d.get("reversal_prob", 0.0)
  if not 0.0 <= reversal <= 1.0:
    p.append(f"data.reversal_prob={reversal}: must be a probability in [0, 1]")
  elif reversal > 0 and d.source != "moving_shapes":
    p.append(f"data.reversal_prob={reversal} renders reversal clips of the moving-shapes set; data.source="
             f"{d.source!r} has none: set it to 0")
  elif reversal > 0 and d.num_frames < 2:
    p.append(f"data.reversal_prob={reversal} needs data.num_frames >= 2 (frames before and after the turn)")
  _choice(p, "data.pad", d.pad, ("zeros", "last"))
  _positive(p, "data.num_frames", d.num_frames)
  _positive(p, "data.num_examples", d.num_examples)
  _choice(p, "text.encoder", c.text.encoder, ("minilm", "bert", "t5"))
  if c.text.encoder in ("bert", "t5") and not c.text.path:
    p.append(f"text.path is empty but text.encoder={c.text.encoder!r} needs a checkpoint directory")
  _positive(p, "text.max_length", c.text.max_length)

  kind = m.get("kind", "unet")
  _choice(p, "model.kind", kind, ("unet", "dit"))
  levels = len(m.dim_mults) if kind == "unet" else 1
  _positive(p, "model.patch_size", m.patch_size)
  if kind == "dit":
    _positive(p, "model.depth", m.get("depth", 0))
    if m.dim < 12:
      p.append(f"model.dim={m.dim}: the transformer (model.kind='dit') needs dim >= 12")
    unet_only = {"model.frame_cond_mlp": m.get("frame_cond_mlp", 0),
                 "model.position_features": m.get("position_features", 0),
                 "model.temporal_conv": m.get("temporal_conv", 0),
                 "model.text_cond_mlp": m.get("text_cond_mlp", 0),
                 "model.max_frames_embedding": m.get("max_frames_embedding", 0),
                 "model.space_time_attention": m.get("space_time_attention", "none") != "none",
                 "model.input_skip": m.get("input_skip", False)}
    for name, value in unet_only.items():
      if value:
        p.append(f"{name}={m.get(name.split('.')[1])!r} is a U-Net option; model.kind='dit' has no use for it "
                 "(its attention already spans every frame and position)")
  if levels < 1:
    p.append("model.dim_mults must have at least one level")
  elif m.patch_size >= 1 and d.image_size % (m.patch_size * 2 ** (levels - 1)):
    p.append(f"data.image_size={d.image_size} must be divisible by model.patch_size * 2**(len(model.dim_mults)-1)"
             f"={m.patch_size * 2 ** (levels - 1)} (the U-Net halves it {levels - 1} times)")
  pt = m.get("temporal_patch_size", 1)
  _positive(p, "model.temporal_patch_size", pt)
  if isinstance(pt, int) and pt > 1:
    if d.num_frames % pt:
      p.append(f"data.num_frames={d.num_frames} must be divisible by model.temporal_patch_size={pt}")
    folded = {"diffusion.frame_noise_prob": c.diffusion.get("frame_noise_prob", 0.0),
              "diffusion.clean_prefix_prob": c.diffusion.get("clean_prefix_prob", 0.0),
              "data.reversal_prob": d.get("reversal_prob", 0.0),
              "train.joint_images": c.train.get("joint_images", 0),
              "sample.frame_offset": c.sample.get("frame_offset", 0)}
    for name, value in folded.items():
      if isinstance(value, (int, float)) and value > 0:
        p.append(f"{name}={value} works frame by frame, but model.temporal_patch_size={pt} folds frames "
                 "together: set one of them off")
  _positive(p, "model.dim", m.dim)
  if m.init_kernel_size % 2 == 0:
    p.append(f"model.init_kernel_size={m.init_kernel_size} must be odd")
  tk = m.get("temporal_conv", 0)
  if tk < 0 or (tk and tk % 2 == 0):
    p.append(f"model.temporal_conv={tk} must be 0 (off) or an odd kernel size")

  for name in ("frame_cond_mlp", "position_features"):
    _positive(p, f"model.{name}", m.get(name, 0), allow_zero=True)

  _choice(p, "model.space_time_attention", m.get("space_time_attention", "none"), ("none", "mid", "all"))
  _choice(p, "diffusion.schedule", df.schedule, ("cosine", "linear"))
  _choice(p, "diffusion.prediction", df.prediction, ("eps", "v", "x0"))
  _choice(p, "diffusion.loss", df.loss, ("l1", "l2"))
  _positive(p, "diffusion.timesteps", df.timesteps)
  if not df.get("schedule_shift", 1.0) > 0:
    p.append(f"diffusion.schedule_shift={df.schedule_shift}: must be > 0 (1 = unshifted)")
  for name in ("cfg_drop_prob", "prob_focus_present", "high_noise_prob", "frame_noise_prob",
               "clean_prefix_prob"):
    v = df.get(name, 0.0)
    if not 0.0 <= v <= 1.0:
      p.append(f"diffusion.{name}={v}: must be a probability in [0, 1]")
  tw = df.get("temporal_loss_weight", 0.0)
  if not tw >= 0:
    p.append(f"diffusion.temporal_loss_weight={tw}: must be >= 0 (0 = off)")
  elif tw and df.prediction != "x0":
    p.append(f"diffusion.temporal_loss_weight={tw} weighs the error of the predicted clean video over frames, "
             f"so it needs diffusion.prediction='x0', got {df.prediction!r}")
  clip = tuple(df.get("loss_snr_clip", ()) or ())
  if clip:
    if len(clip) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in clip) \
        or not 0 <= clip[0] <= clip[1] < float("inf"):
      p.append(f"diffusion.loss_snr_clip={clip}: must be () (off) or (lo, hi) with 0 <= lo <= hi, finite; "
               "e.g. (0, 5) is Min-SNR-5, (1, 5) the x0 loss with low noise counted up to 5 times")
    elif df.loss != "l2":
      p.append(f"diffusion.loss_snr_clip={clip} weighs squared errors by SNR, so it needs diffusion.loss='l2', "
               f"got {df.loss!r}")
  t_range = losses.config_t_range(df)
  if t_range:
    try:
      losses.timestep_window(df.timesteps, t_range)
    except ValueError as e:
      p.append(f"diffusion.{e}; () trains on every level")
    if df.get("high_noise_prob", 0.0):
      p.append(f"diffusion.t_range={t_range} and diffusion.high_noise_prob={df.high_noise_prob} both say where "
               "to train: give one of them")
  if not 0.0 <= df.get("high_noise_from", 0.8) < 1.0:
    p.append(f"diffusion.high_noise_from={df.high_noise_from}: must be a fraction of the timesteps in [0, 1)")

  _choice(p, "sample.sampler", s.sampler, ("ddim", "ddpm", "dpmpp2m"))
  if not 1 <= s.steps <= df.timesteps:
    p.append(f"sample.steps={s.steps}: must be between 1 and diffusion.timesteps={df.timesteps}")
  offset = s.get("frame_offset", 0)
  if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
    p.append(f"sample.frame_offset={offset!r}: must be a non-negative integer (sampler steps between frames)")
  if offset and s.sampler != "ddim":
    p.append(f"sample.frame_offset={offset} (pyramid sampling) needs sample.sampler=ddim, got {s.sampler!r}")
  if s.cond_scale < 0:
    p.append(f"sample.cond_scale={s.cond_scale}: must be >= 0")
  if s.get("reconstruction_weight", 0.0) < 0:
    p.append(f"sample.reconstruction_weight={s.reconstruction_weight}: must be >= 0")
  if not s.prompts:
    p.append("sample.prompts is empty")

  _positive(p, "optim.lr", o.lr)
  _positive(p, "optim.warmup_steps", o.warmup_steps, allow_zero=True)
  _choice(p, "optim.decay", o.decay, ("cosine", "constant"))
  _positive(p, "optim.grad_clip", o.grad_clip, allow_zero=True)
  if not 0.0 <= o.ema_decay < 1.0:
    p.append(f"optim.ema_decay={o.ema_decay}: must be in [0, 1)")

  _positive(p, "train.num_steps", t.num_steps)
  _positive(p, "train.grad_accum", t.grad_accum)
  for name in ("log_every", "ckpt_every", "keep_ckpts"):
    _positive(p, f"train.{name}", t[name])
  _positive(p, "train.sample_every", t.sample_every, allow_zero=True)
  p += dtype_problems(c)
  k = t.get("joint_images", 0)
  _positive(p, "train.joint_images", k, allow_zero=True)
  if isinstance(k, int) and k > 0:
    micro = t.batch_size // max(t.grad_accum, 1)
    if k >= micro:
      p.append(f"train.joint_images={k}: the images are frames of other videos in the (micro-)batch, so it "
               f"must be < train.batch_size/grad_accum={micro}")
    if tk:
      p.append(f"train.joint_images={k} with model.temporal_conv={tk}: temporal convs would mix the images "
               "into the video frames; set one of them to 0")

  _choice(p, "sharding.preset", c.sharding.preset, tuple(SHARDING_PRESETS))
  try:
    shape = dict(zip(("data", "fsdp", "tensor"), resolve_mesh_shape(c.mesh.to_dict(), num_devices)))
  except ValueError as e:
    p.append(str(e))
  else:
    batch_ways = shape["data"] * shape["fsdp"]
    micro = t.batch_size // max(t.grad_accum, 1)
    if t.batch_size % max(t.grad_accum, 1):
      p.append(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
    elif micro % batch_ways:
      p.append(f"train.batch_size/grad_accum={micro} must be divisible by mesh data*fsdp={batch_ways}")
    if t.batch_size % num_processes:
      p.append(f"train.batch_size={t.batch_size} must be divisible by the {num_processes} processes")
    if shape["tensor"] > 1 and m.attn_heads % shape["tensor"]:
      p.append(f"model.attn_heads={m.attn_heads} must be divisible by mesh.tensor={shape['tensor']}")
  return p


def validate_vdm(c, num_devices: int, num_processes: int = 1):
  problems = vdm_problems(c, num_devices, num_processes)
  if problems:
    raise ConfigError(problems)
  return c


def describe_mesh(c, num_devices):
  shape = resolve_mesh_shape(c.mesh.to_dict(), num_devices)
  return " x ".join(f"{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), shape)) + f" ({math.prod(shape)} devices)"
