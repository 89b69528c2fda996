"""Generation from a trained workdir: restore the EMA parameters once, sample prompts in fixed-size chunks."""
import copy
import functools
import logging
import pathlib

import jax
import numpy as np

from vidgen_jax.diffusion import conditioning
from vidgen_jax.diffusion import experts
from vidgen_jax.io import video as video_io
from vidgen_jax.sample import long_video
from vidgen_jax.train import checkpoint as ckpt_lib
from vidgen_jax.train import setup as setup_lib
from vidgen_jax.train import vdm

log = logging.getLogger("vidgen.sample")
DEFAULT_RECONSTRUCTION_WEIGHT = 5.0   # configs/vdm_shapes.py sample.reconstruction_weight


def trained_for_clean(config) -> bool:
  """Whether a model saw clean frames next to noisy ones in training (diffusion.frame_noise_prob or
  clean_prefix_prob > 0, or data.reversal_prob > 0, whose clips give their frames before the turn clean),
  the input that conditioning by 'clean' gives it."""
  d = config.diffusion
  return bool(d.get("frame_noise_prob", 0.0) or d.get("clean_prefix_prob", 0.0)
              or config.get("data", {}).get("reversal_prob", 0.0))


class SamplesUnavailable(ValueError):
  """A model that cannot make training samples by itself (an expert for some noise levels only)."""


class Generator:
  """Samples videos for text prompts with a workdir's EMA parameters.

  `with_low_noise_expert` pairs it with a second workdir's model for the nearly clean steps (an expert
  split by noise level, `diffusion.experts`); `experts` then describes the pair, and None otherwise."""

  def __init__(self, run, params, step: int, chunk: int = 16):
    self.run, self.params, self.step, self.chunk = run, params, step, chunk
    self.low_noise = None      # experts.LowNoiseExpert of a split; params is then (this model's, its)
    self.experts = None        # {"low_noise_workdir", "low_noise_step", "switch", ...} of a split
    self.expert_config = None  # the low-noise expert's config

  @property
  def tag(self) -> str:
    """A name for what samples: '' for one model, 'experts_<low-noise workdir's name>-<its step>_s<switch>'
    for a split ('experts_s<switch>' when the low-noise model has no workdir), '..._g<scale>' when that model
    has its own guidance weight (eval directory names: two splits with different low-noise models write to
    different directories)."""
    if self.experts is None:
      return ""
    name = pathlib.Path(self.experts["low_noise_workdir"]).name
    low = f"{name}-{self.experts['low_noise_step']}_" if name else ""
    scale = self.experts.get("low_noise_cond_scale")
    return f"experts_{low}s{self.experts['switch']:g}" + ("" if scale is None else f"_g{scale:g}")

  def with_low_noise_expert(self, expert: "Generator", switch: float, workdir: str = "",
                            cond_scale: float | None = None, high_noise_workdir: str = "") -> "Generator":
    """A generator whose steps at noise level t/T >= `switch` run this model and the others `expert`'s.

    The two may differ in parametrisation and architecture but must share the noise schedule, the text
    encoder and the video shape (a clear error otherwise). switch 0 samples with this model alone, 1 with
    the expert alone. `cond_scale` guides the expert's steps with their own classifier-free guidance weight
    (None: the one the sampler is given for both). `workdir` and `high_noise_workdir` name the two models in
    `experts` (the latter only when given: an evaluation writes into this model's own workdir)."""
    cond_scale = None if cond_scale is None else float(cond_scale)
    if cond_scale is not None and not cond_scale >= 0:
      raise ValueError(f"the low-noise guidance weight must be >= 0, got {cond_scale}")
    if self.low_noise is not None or expert.low_noise is not None:
      raise ValueError("an expert split pairs two single models; neither may already be a split")
    check_experts_compatible(self.run, expert.run)
    num_timesteps = self.run.sched.num_timesteps
    switch_t = experts.switch_index(switch, num_timesteps)
    experts.check_covers(self.noise_window, (switch_t, num_timesteps), num_timesteps, "the high-noise model")
    experts.check_covers(expert.noise_window, (0, switch_t), num_timesteps, f"the low-noise model {workdir}".strip())
    split = Generator(self.run, (self.params, expert.params), self.step, self.chunk)
    split.low_noise = experts.LowNoiseExpert(expert.run.model, expert.config.diffusion.prediction, switch_t,
                                             cond_scale)
    split.experts = {"low_noise_workdir": str(workdir), "low_noise_step": expert.step, "switch": float(switch),
                     "low_noise_prediction": expert.config.diffusion.prediction,
                     "high_noise_prediction": self.config.diffusion.prediction}
    if cond_scale is not None:
      split.experts["low_noise_cond_scale"] = cond_scale
    if high_noise_workdir:
      split.experts["high_noise_workdir"] = str(high_noise_workdir)
    split.expert_config = expert.config
    return split

  @property
  def config(self):
    return self.run.config

  @property
  def noise_window(self):
    """[lo, hi) schedule indices the model was trained on (diffusion.t_range; of the high-noise model of a
    split)."""
    return experts.trained_window(self.config.diffusion, self.run.sched.num_timesteps)

  def check_full_chain(self):
    """Raises ValueError unless sampling from pure noise to a clean video stays within the noise levels the
    model (or the split's two models) trained on: an expert for some levels samples only inside a split."""
    if self.low_noise is None:
      num_timesteps = self.run.sched.num_timesteps
      experts.check_covers(self.noise_window, (0, num_timesteps), num_timesteps, "this model")

  @classmethod
  def from_run(cls, run, state, step: int):
    return cls(run, state.ema_params, step)

  def training_samples(self, seed: int = 0):
    """(videos, labels, info) written during training: one video per config.sample.prompts entry, with the
    run's sampler settings. An expert for some noise levels (diffusion.t_range) samples in a split with the
    model it was fine-tuned from (`with_init_source`); info then holds {"experts": the split}, else {}."""
    gen = self.with_init_source()
    prompts, s = list(self.config.sample.prompts), self.config.sample
    videos = gen.generate(prompts, seed=seed, sampler=s.get("sampler"), steps=s.get("steps"),
                          cond_scale=s.get("cond_scale"))
    return videos, prompts, ({"experts": gen.experts} if gen.experts else {})

  def with_init_source(self) -> "Generator":
    """This generator if it samples a whole chain by itself; for an expert trained on the levels above (below)
    a switch, the split in which its `train.init_from` source (the checkpoint it was fine-tuned from, which
    covers every level) denoises the levels below (above) it. Raises SamplesUnavailable, saying why, when no
    such split exists: no source, a source that is gone or itself an expert, or a window inside (0, 1)."""
    try:
      self.check_full_chain()
      return self
    except ValueError as e:
      alone = str(e)
    source = self.config.train.get("init_from", "")
    if not source:
      raise SamplesUnavailable(f"{alone}; with no train.init_from there is no model for the other levels")
    lo, hi = self.noise_window
    num_timesteps = self.run.sched.num_timesteps
    if lo > 0 and hi < num_timesteps:
      raise SamplesUnavailable(f"{alone}; a split of two models cannot give its train.init_from source the "
                               "levels on both sides of it")
    step = self.config.train.get("init_from_step", -1)
    try:
      src = Generator.from_workdir(source, step=None if step < 0 else step, chunk=self.chunk, like=self.run)
      if lo > 0:
        split = self.with_low_noise_expert(src, lo / num_timesteps, workdir=source, high_noise_workdir="(this run)")
      else:
        split = src.with_low_noise_expert(self, hi / num_timesteps, workdir="(this run)", high_noise_workdir=source)
    except (OSError, ValueError) as e:
      raise SamplesUnavailable(f"{alone}; pairing it with its train.init_from source failed: {e}") from None
    log.info("training samples of an expert for t/T in [%g, %g): %s at step %d denoises the other levels",
             lo / num_timesteps, hi / num_timesteps, source, src.step)
    return split

  @classmethod
  def from_workdir(cls, workdir, step=None, chunk: int = 16, like=None):
    """The EMA parameters of `workdir`'s checkpoint `step` (default latest). `like`: a Run whose devices,
    mesh, sharding and text encoder (for the same config.text) to use instead of building the workdir's own
    (the partner of an expert split sampled inside a training run)."""
    config = ckpt_lib.read_config(workdir)
    if like is None:
      run = setup_lib.build_run(config)
    else:
      check_same_text(config, like.config, f"{workdir} reads text with another encoder")
      config.mesh, config.sharding = copy.deepcopy(like.config.mesh), copy.deepcopy(like.config.sharding)
      run = setup_lib.build_run(config, text_encoder=like.text_encoder, devices=list(like.mesh.devices.flat))
    ckpt = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_ckpts)
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{workdir} has no checkpoint yet: train first (vidgen train ... --workdir {workdir})")
    if step is not None and step not in ckpt.all_steps():
      raise ValueError(f"no checkpoint at step {step} in {workdir}; available: {ckpt.all_steps()}")
    state = ckpt.restore(run.abstract_state, step=step)
    ckpt.close()
    return cls(run, state.ema_params, int(state.step), chunk)

  @functools.lru_cache(maxsize=8)
  def _fn(self, batch, sampler, steps, cond_scale, frame_offset=None):
    kw = {k: v for k, v in dict(sampler=sampler, steps=steps, cond_scale=cond_scale,
                                frame_offset=frame_offset).items() if v is not None}
    return vdm.make_sample_fn(self.run.model, self.run.sched, self.run.config, low_noise=self.low_noise, **kw)

  def generate(self, prompts, seed: int = 0, *, sampler=None, steps=None, cond_scale=None,
               frame_offset=None) -> np.ndarray:
    """uint8 videos (N, T, H, W, 3), one per prompt; reproducible from `seed`. `frame_offset` > 0 samples
    as a pyramid (`samplers.ddim_sample`); None takes config.sample.frame_offset."""
    prompts = [str(p) for p in prompts]
    if not prompts:
      raise ValueError("no prompts given")
    self.check_full_chain()
    batch = min(self.chunk, len(prompts))
    fn = self._fn(batch, sampler, steps, cond_scale, frame_offset)
    out = []
    with self.run.context():
      for i in range(0, len(prompts), batch):
        part = prompts[i:i + batch]
        part = part + [part[-1]] * (batch - len(part))
        tokens, mask = self.run.text_encoder.encode(part)
        key = jax.random.fold_in(jax.random.key(seed), i // batch)
        out.append(np.asarray(jax.device_get(fn(self.params, key, tokens, mask))))
    videos = np.concatenate(out)[:len(prompts)]
    return video_io.to_uint8(videos)


  # ---- conditional generation: video prediction, long videos, stories, super-resolution ----

  @functools.lru_cache(maxsize=8)
  def _conditional_fn(self, kind, sampler, steps, cond_scale, method, factor=None):
    overrides = {k: v for k, v in dict(sampler=sampler, steps=steps, cond_scale=cond_scale).items()
                 if v is not None}
    run = self.run

    def frames_fn(params, rng, tokens, mask, known_video, known_frames, weight):
      obs = conditioning.frames_observation(known_video, known_frames)
      return vdm.sample(params, rng, tokens, mask, model=run.model, sched=run.sched, config=run.config,
                        num_frames=known_video.shape[1], observation=obs, method=method,
                        guidance_weight=weight, low_noise=self.low_noise, **overrides)

    def lowres_fn(params, rng, tokens, mask, lowres, weight):
      obs = conditioning.lowres_observation(lowres, factor)
      return vdm.sample(params, rng, tokens, mask, model=run.model, sched=run.sched, config=run.config,
                        num_frames=lowres.shape[1], image_size=lowres.shape[2] * factor, observation=obs,
                        method="reconstruction", guidance_weight=weight, low_noise=self.low_noise, **overrides)

    return jax.jit(frames_fn if kind == "frames" else lowres_fn)

  def _weight(self, guidance_weight):
    """The reconstruction guidance weight: the argument, else the config's (workdirs written before it
    existed get the shipped default)."""
    return float(self.config.sample.get("reconstruction_weight", DEFAULT_RECONSTRUCTION_WEIGHT)
                 if guidance_weight is None else guidance_weight)

  def generate_long(self, stories, seed: int = 0, *, num_frames=None, segment_frames=None, overlap=None,
                    given=None, method="reconstruction", guidance_weight=None, sampler=None, steps=None,
                    cond_scale=None) -> np.ndarray:
    """uint8 videos (N, num_frames, H, W, 3) made window by window (`long_video.run_windows`).

    stories: one list of prompts per video (all of equal length); with several prompts, `segment_frames`
    frames per prompt form a story (num_frames defaults to their total). given: optional uint8
    (N, k, H, W, 3) first frames to continue (video prediction). overlap: known frames per extension
    window (default half the model's window). method: 'reconstruction' (guidance weight `guidance_weight`,
    default config.sample.reconstruction_weight), 'replacement', or 'clean' (known frames enter the model
    noise-free at timestep 0: needs a model trained with diffusion.frame_noise_prob or clean_prefix_prob > 0).
    """
    self.check_full_chain()
    configs = [self.config] + ([self.expert_config] if self.low_noise is not None else [])
    if method == "clean" and not all(trained_for_clean(c) for c in configs):
      raise ValueError("method 'clean' feeds known frames at timestep 0 while the others are noisy: it needs a "
                       "model trained with clean frames next to noisy ones (diffusion.frame_noise_prob or "
                       "clean_prefix_prob > 0, or data.reversal_prob > 0); this one was not, use reconstruction "
                       "or replacement")
    stories = [[str(p) for p in s] for s in stories]
    if not stories or any(len(s) != len(stories[0]) or not s for s in stories):
      raise ValueError("give every video the same, non-zero number of prompts")
    num_prompts = len(stories[0])
    window = self.config.data.num_frames
    if num_prompts > 1 and segment_frames is None:
      raise ValueError("several prompts per video form a story: give segment_frames (frames per prompt)")
    num_frames = num_frames or (segment_frames * num_prompts if segment_frames else window)
    overlap = window // 2 if overlap is None else overlap
    size = self.config.data.image_size
    if given is None:
      first = np.zeros((len(stories), 0, size, size, 3), np.float32)
    else:
      given = np.asarray(given)
      if given.ndim != 5 or given.shape[0] != len(stories) or given.shape[2:] != (size, size, 3):
        raise ValueError(f"given frames must be uint8 ({len(stories)}, k, {size}, {size}, 3), got {given.shape}")
      first = given.astype(np.float32) / 127.5 - 1.0
    fn = self._conditional_fn("frames", sampler, steps, cond_scale, method)
    weight = self._weight(guidance_weight)

    def sample_window(known_video, known_count, prompt, index):
      tokens, mask = self.run.text_encoder.encode([s[prompt] for s in stories])
      known_frames = np.arange(known_video.shape[1]) < known_count
      key = jax.random.fold_in(jax.random.key(seed), index)
      with self.run.context():
        return jax.device_get(fn(self.params, key, tokens, mask, known_video, known_frames, weight))

    video = long_video.run_windows(sample_window, first, num_frames, window, overlap,
                                   segment_frames=segment_frames, num_prompts=num_prompts)
    return video_io.to_uint8(np.clip(video, -1.0, 1.0))

  def upsample(self, lowres, prompts, seed: int = 0, *, guidance_weight=None, sampler=None, steps=None,
               cond_scale=None) -> np.ndarray:
    """Super-resolution by reconstruction guidance: uint8 (N, T, h, w, 3) -> (N, T, H, W, 3) at the model's
    image size, whose average pooling by H/h reproduces the input."""
    self.check_full_chain()
    lowres = np.asarray(lowres)
    size = self.config.data.image_size
    if lowres.ndim != 5 or lowres.shape[0] != len(prompts) or lowres.shape[2] != lowres.shape[3] \
        or size % lowres.shape[2]:
      raise ValueError(f"low-resolution videos must be (len(prompts), T, h, h, 3) with h dividing {size}, "
                       f"got {lowres.shape}")
    fn = self._conditional_fn("lowres", sampler, steps, cond_scale, "reconstruction", size // lowres.shape[2])
    tokens, mask = self.run.text_encoder.encode([str(p) for p in prompts])
    with self.run.context():
      out = fn(self.params, jax.random.key(seed), tokens, mask, lowres.astype(np.float32) / 127.5 - 1.0,
               self._weight(guidance_weight))
    return video_io.to_uint8(np.clip(np.asarray(jax.device_get(out)), -1.0, 1.0))


_FAMILIES = {"vdm": "vidgen_jax.sample.generate:Generator",
             "phenaki": "vidgen_jax.sample.phenaki:PhenakiGenerator",
             "cvivit": "vidgen_jax.sample.phenaki:TokenizerReconstructor"}


def generator_class(config):
  """The sampling class of a config's model family (imported on first use)."""
  import importlib
  family = config.get("family", "vdm")
  if family not in _FAMILIES:
    raise ValueError(f"model family {family!r} has no generator; known: {sorted(_FAMILIES)}")
  module, name = _FAMILIES[family].split(":")
  return getattr(importlib.import_module(module), name)


def check_experts_compatible(high_run, low_run):
  """Raises ValueError unless two video-diffusion runs can share one sampling chain: the same noise schedule,
  video shape and text encoder (`load_generator` checks the families before restoring anything)."""
  hc, lc = high_run.config, low_run.config
  for key in ("num_frames", "image_size"):
    if hc.data[key] != lc.data[key]:
      raise ValueError(f"the experts sample different videos: data.{key} {hc.data[key]} against {lc.data[key]}")
  hs, ls = high_run.sched, low_run.sched
  if hs.num_timesteps != ls.num_timesteps or not np.allclose(np.asarray(hs.alphas_cumprod),
                                                             np.asarray(ls.alphas_cumprod), rtol=1e-6, atol=0):
    raise ValueError("the experts were trained with different noise schedules (diffusion.schedule, "
                     "schedule_shift or timesteps): a noise level means different things to them")
  check_same_text(hc, lc, "the experts read text with different encoders")


def check_same_text(config_a, config_b, problem: str):
  """Raises ValueError(problem, with both text configs) unless the two configs read text the same way."""
  ta, tb = (dict(c.text.items()) for c in (config_a, config_b))
  if ta != tb:
    raise ValueError(f"{problem}: {ta} against {tb}")


def load_generator(workdir, step=None, *, low_noise_workdir=None, low_noise_step=None, switch=0.5,
                   low_noise_cond_scale=None):
  """The generator of any model family's workdir (its config.json's `family` picks the class).

  With `low_noise_workdir`, a video-diffusion expert split: this workdir's model denoises the steps at
  t/T >= switch, `low_noise_workdir`'s (checkpoint `low_noise_step`, default latest) the rest, guided with
  `low_noise_cond_scale` if given."""
  if low_noise_workdir is None:
    if low_noise_step is not None or low_noise_cond_scale is not None:
      raise ValueError("a low-noise step or guidance weight needs a low-noise workdir")
    gen = generator_class(ckpt_lib.read_config(workdir)).from_workdir(workdir, step=step)
    if isinstance(gen, Generator):
      gen.check_full_chain()     # refused here, before an evaluation spends anything
    return gen
  gen, expert = load_experts(workdir, step, low_noise_workdir, low_noise_step)
  return gen.with_low_noise_expert(expert, switch, workdir=str(low_noise_workdir), cond_scale=low_noise_cond_scale)


def load_experts(workdir, step, low_noise_workdir, low_noise_step):
  """The two generators of an expert split, not yet paired (a sweep pairs them at several switches); their
  families are checked from config.json before either checkpoint is restored."""
  for w in (workdir, low_noise_workdir):
    family = ckpt_lib.read_config(w).get("family", "vdm")
    if family != "vdm":
      raise ValueError(f"an expert split pairs two video-diffusion workdirs; {w} is a {family!r} workdir")
  return tuple(Generator.from_workdir(w, step=s) for w, s in ((workdir, step), (low_noise_workdir, low_noise_step)))
