"""Generation from a trained workdir: restore the EMA parameters once, sample prompts in fixed-size chunks."""
import functools
import logging

import jax
import numpy as np

from vidgen_jax.io import video as video_io
from vidgen_jax.train import checkpoint as ckpt_lib
from vidgen_jax.train import setup as setup_lib
from vidgen_jax.train import vdm

log = logging.getLogger("vidgen.sample")


class Generator:
  """Samples videos for text prompts with a workdir's EMA parameters."""

  def __init__(self, run, params, step: int, chunk: int = 16):
    self.run, self.params, self.step, self.chunk = run, params, step, chunk

  @property
  def config(self):
    return self.run.config

  @classmethod
  def from_workdir(cls, workdir, step=None, chunk: int = 16):
    config = ckpt_lib.read_config(workdir)
    run = setup_lib.build_run(config)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_ckpts)
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{workdir} has no checkpoint yet: train first (vidgen train ... --workdir {workdir})")
    if step is not None and step not in ckpt.all_steps():
      raise ValueError(f"no checkpoint at step {step} in {workdir}; available: {ckpt.all_steps()}")
    state = ckpt.restore(run.abstract_state, step=step)
    ckpt.close()
    return cls(run, state.ema_params, int(state.step), chunk)

  @functools.lru_cache(maxsize=8)
  def _fn(self, batch, sampler, steps, cond_scale):
    kw = {k: v for k, v in dict(sampler=sampler, steps=steps, cond_scale=cond_scale).items() if v is not None}
    return vdm.make_sample_fn(self.run.model, self.run.sched, self.run.config, **kw)

  def generate(self, prompts, seed: int = 0, *, sampler=None, steps=None, cond_scale=None) -> np.ndarray:
    """uint8 videos (N, T, H, W, 3), one per prompt; reproducible from `seed`."""
    prompts = [str(p) for p in prompts]
    if not prompts:
      raise ValueError("no prompts given")
    batch = min(self.chunk, len(prompts))
    fn = self._fn(batch, sampler, steps, cond_scale)
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


_FAMILIES = {"vdm": Generator}


def load_generator(workdir, step=None):
  """The generator of any model family's workdir (its config.json's `family` picks the class)."""
  family = ckpt_lib.read_config(workdir).get("family", "vdm")
  if family not in _FAMILIES:
    raise ValueError(f"{workdir}: model family {family!r} has no generator; known: {sorted(_FAMILIES)}")
  return _FAMILIES[family].from_workdir(workdir, step=step)
