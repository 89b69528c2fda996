"""Sampling for the Phenaki family: C-ViViT reconstructions, and text -> tokens (MaskGIT) -> video.

`PhenakiGenerator.generate(prompts)` decodes token grids with `maskgit.decoding.maskgit_decode` (cosine
schedule, annealed temperature, classifier-free guidance over the learned null text, Token-Critic
re-masking when the workdir trained one) and turns them into video with the workdir's frozen tokenizer.
`generate_long(stories, segment_frames=...)` makes multi-prompt stories: every scene after the first is
primed with the tokens of the previous scene's last frames (re-encoded as the start of a clip; the causal
tokenizer makes those tokens depend on those frames only), so scenes follow each other.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.io import video as video_io
from vidgen_jax.maskgit import decoding
from vidgen_jax.models.cvivit import CViViT
from vidgen_jax.train import checkpoint as ckpt_lib
from vidgen_jax.train import setup as setup_lib


def _restore(workdir, step=None):
  config = ckpt_lib.read_config(workdir)
  run = setup_lib.build_run(config)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_ckpts)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint yet: train first (vidgen train ... --workdir {workdir})")
  state = ckpt.restore(run.abstract_state, step=step)
  ckpt.close()
  return run, state


class _FromWorkdir:
  """A run plus the EMA parameters of one of its checkpoints."""

  def __init__(self, run, params, step: int):
    self.run, self.params, self.step = run, params, step

  @property
  def config(self):
    return self.run.config

  @classmethod
  def from_workdir(cls, workdir, step=None):
    run, state = _restore(workdir, step)
    return cls(run, state.ema_params, int(state.step))

  @classmethod
  def from_run(cls, run, state, step):
    return cls(run, state.ema_params, step)


class TokenizerReconstructor(_FromWorkdir):
  """A trained C-ViViT: reconstructions of videos (its 'samples' are reconstructions of fixed real clips)."""

  def __init__(self, run, params, step: int):
    super().__init__(run, params, step)
    self._recon = jax.jit(lambda p, v: run.model.apply(p, v)[0])

  def reconstruct(self, videos) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> uint8 reconstructions."""
    x = np.asarray(videos, np.float32) / 255.0
    with self.run.context():
      out = jax.device_get(self._recon(self.params["tokenizer"], x))
    return (np.clip(np.asarray(out), 0, 1) * 255).round().astype(np.uint8)

  def training_samples(self, seed: int = 0):
    from vidgen_jax.eval import run_eval
    prompts = list(self.config.sample.prompts)
    real = run_eval.real_videos(prompts, seed, self.config.data.image_size, self.config.data.num_frames)
    recon = self.reconstruct(real)
    pairs = np.concatenate([real, recon], axis=3)                      # original | reconstruction
    return pairs, [f"{p} (real | recon)" for p in prompts], {}


class PhenakiGenerator(_FromWorkdir):
  """Text to video with a Phenaki workdir's EMA MaskGIT (and critic) and its frozen tokenizer."""

  chunk = 16   # prompts per decoding call

  def training_samples(self, seed: int = 0):
    prompts = list(self.config.sample.prompts)
    return self.generate(prompts, seed=seed), prompts, {}

  @functools.lru_cache(maxsize=8)
  def _decode_fn(self, batch, steps, cond_scale, temperature):
    run, grid = self.run, self.run.parts["grid"]
    n = grid[0] * grid[1] * grid[2]
    critic = run.parts["critic"]

    def fn(params, rng, text, text_mask, prime_tokens, prime_mask):
      def logits_fn(tokens, null):
        reps = tokens.shape[0] // text.shape[0]
        t, m = jnp.concatenate([text] * reps), jnp.concatenate([text_mask] * reps)
        return run.model.apply(params["maskgit"], tokens, t, m, null, video_shape=grid)
      critic_fn = None
      if critic is not None:
        critic_fn = lambda tokens: critic.apply(params["critic"], tokens, text, text_mask, video_shape=grid)
      tokens = decoding.maskgit_decode(logits_fn, rng, batch=batch, num_tokens=n, steps=steps,
                                       mask_id=run.model.mask_id, schedule=run.config.train.mask_schedule,
                                       temperature=temperature, cond_scale=cond_scale, prime_tokens=prime_tokens,
                                       prime_mask=prime_mask, critic_fn=critic_fn)
      indices = tokens.reshape((batch,) + grid)
      video = run.parts["tokenizer"].apply(params["tokenizer"], indices, method=CViViT.decode_indices)
      return jnp.clip(video, 0.0, 1.0)
    return jax.jit(fn)

  def _sample(self, prompts, seed, prime_tokens=None, prime_mask=None, steps=None, cond_scale=None):
    s = self.config.sample
    steps = steps or s.steps
    cond_scale = s.cond_scale if cond_scale is None else cond_scale
    grid = self.run.parts["grid"]
    n = grid[0] * grid[1] * grid[2]
    b = len(prompts)
    fn = self._decode_fn(b, steps, float(cond_scale), float(s.temperature))
    text, mask = self.run.text_encoder.encode(prompts)
    prime_tokens = np.zeros((b, n), np.int32) if prime_tokens is None else prime_tokens
    prime_mask = np.zeros((b, n), bool) if prime_mask is None else prime_mask
    with self.run.context():
      out = fn(self.params, jax.random.key(seed), text, mask, prime_tokens, prime_mask)
    return np.asarray(jax.device_get(out))

  def generate(self, prompts, seed: int = 0, *, sampler=None, steps=None, cond_scale=None) -> np.ndarray:
    """uint8 videos (N, T, H, W, 3), one per prompt (`sampler` is accepted for a common interface)."""
    prompts = [str(p) for p in prompts]
    if not prompts:
      raise ValueError("no prompts given")
    out = []
    for i in range(0, len(prompts), self.chunk):
      out.append(self._sample(prompts[i:i + self.chunk], seed * 1000 + i, steps=steps, cond_scale=cond_scale))
    return (np.concatenate(out) * 255).round().astype(np.uint8)

  def generate_long(self, stories, seed: int = 0, *, num_frames=None, segment_frames=None, prime_frames: int = 1,
                    steps=None, cond_scale=None, **unused) -> np.ndarray:
    """Multi-prompt stories: scene k (prompt k) is primed with the tokens of the last `prime_frames` frames
    of scene k-1 (1 + j * temporal_patch frames). Each scene has the model's frame count; `segment_frames`,
    if given, must equal it. Returns uint8 (N, frames, H, W, 3) with the primed frames not repeated."""
    tokenizer = self.run.parts["tokenizer"]
    window = self.config.data.num_frames
    if segment_frames not in (None, window):
      raise ValueError(f"Phenaki scenes are {window} frames (the tokenizer's clip); got segment_frames={segment_frames}")
    steps_primed = tokenizer.num_token_steps(prime_frames)
    grid = self.run.parts["grid"]
    per_step = grid[1] * grid[2]
    stories = [[str(p) for p in s] for s in stories]
    video = self._sample([s[0] for s in stories], seed, steps=steps, cond_scale=cond_scale)
    pieces = [video]
    for k in range(1, len(stories[0])):
      last = (pieces[-1][:, -prime_frames:] * 255).round().astype(np.uint8)
      with self.run.context():
        _, idx, _ = tokenizer.apply(self.params["tokenizer"], last.astype(np.float32) / 255.0, method=CViViT.encode)
      prime = np.zeros((len(stories), grid[0] * per_step), np.int32)
      prime[:, :steps_primed * per_step] = np.asarray(idx).reshape(len(stories), -1)
      prime_mask = np.arange(prime.shape[1])[None] < steps_primed * per_step
      scene = self._sample([s[k] for s in stories], seed + k, prime, np.broadcast_to(prime_mask, prime.shape),
                           steps=steps, cond_scale=cond_scale)
      pieces.append(scene[:, prime_frames:])
    video = np.concatenate(pieces, axis=1)
    if num_frames:
      video = video[:, :num_frames]
    return video_io.to_uint8(video * 2.0 - 1.0)
