"""The training loop of every model family: resume, step, log, checkpoint, sample; a checkpoint on SIGTERM.

    vidgen train --config configs/vdm_shapes.py --workdir workdirs/run

The workdir is self-describing: config.json, checkpoints/, tb/ (TensorBoard), metrics.jsonl, samples/.
Re-running the same command resumes from the latest checkpoint (state, EMA, optimizer and data position).
"""
import json
import logging
import pathlib
import signal
import time

import jax

from vidgen_jax import configs
from vidgen_jax.data import pipeline
from vidgen_jax.io import video as video_io
from vidgen_jax.sample import generate
from vidgen_jax.train import checkpoint as ckpt_lib
from vidgen_jax.train import families
from vidgen_jax.train import setup as setup_lib
from vidgen_jax.train import validation
from vidgen_jax.train.progress import Progress, MetricWriter

log = logging.getLogger("vidgen.train")


class _Preemption:
  """Turns SIGTERM (and SIGINT) into a flag the loop checks after every step."""

  def __init__(self):
    self.requested = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread (e.g. under some test runners): no handler, no crash
        pass
    return self

  def _handler(self, signum, frame):
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _changed(old, config, sections) -> list[str]:
  """Dotted keys under the top-level `sections` whose values differ between an earlier run's config and this
  one (options added since that run, at their off value, are not changes)."""
  return [k for k in configs.diff(old, config, added_off_ok=True) if k.split(".")[0] in sections]


def check_resume_config(workdir: pathlib.Path, config):
  """A workdir keeps its config: resuming with a different model/data/diffusion setup is refused."""
  path = workdir / "config.json"
  if not path.is_file():
    return
  changed = _changed(configs.from_json(path.read_text()), config, ("model", "data", "diffusion", "text"))
  if changed:
    raise ValueError(f"{workdir} was trained with a different config ({', '.join(changed)}); "
                     "use a new --workdir or the original config")


def init_from_workdir(run, config):
  """A fresh state (step 0, new optimizer moments, data from its seed) whose params and EMA are another
  run's (config.train.init_from, its latest checkpoint or train.init_from_step): fine-tuning, e.g. with another
  diffusion objective, optimizer or data. The model (and text encoder) config must be the source's."""
  source = pathlib.Path(config.train.init_from)
  changed = _changed(ckpt_lib.read_config(source), config, ("family", "model", "text"))
  if changed:
    raise ValueError(f"train.init_from: {source} was trained with a different model ({', '.join(changed)}); "
                     "fine-tuning needs the same model and text config")
  step = config.train.get("init_from_step", -1)
  weights, step = ckpt_lib.restore_weights(source, run.abstract_state, None if step < 0 else step)
  log.info("initialised params and EMA from %s at its step %d", source, step)
  return run.init_state(config.seed).replace(**weights)


def train(config, workdir, *, devices=None, stop_after: int | None = None, text_encoder=None):
  """Trains to config.train.num_steps (or stops early after `stop_after` steps); returns the final state."""
  workdir = pathlib.Path(workdir)
  num_devices = len(devices) if devices is not None else jax.device_count()
  families.get(config.get("family", "vdm")).validate(config, num_devices, jax.process_count())
  workdir.mkdir(parents=True, exist_ok=True)
  check_resume_config(workdir, config)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(configs.to_json(config))

  t_start = time.time()
  run = setup_lib.build_run(config, text_encoder=text_encoder, devices=devices)
  log.info("mesh %s, sharding preset %s", validation.describe_mesh(config, num_devices), config.sharding.preset)
  source = pipeline.make_source(config.data)
  if config.data.source == "moving_shapes" and run.text_encoder is not None:
    from vidgen_jax.data import moving_shapes
    run.text_encoder.prefill(moving_shapes.captions(config.data.split))
  data_iter = iter(pipeline.make_dataset(source, config.train.batch_size, config.data.seed))

  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_ckpts, every=config.train.ckpt_every)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(run.abstract_state, data_iter)
    log.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  elif config.train.get("init_from"):
    state = init_from_workdir(run, config)
  else:
    state = run.init_state(config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("%s parameters: %.2fM; set-up took %.1fs", config.get("family", "vdm"), n_params / 1e6,
           time.time() - t_start)

  batch_sh = run.batch_shardings()
  step_fn = run.jit_train_step()
  writer = MetricWriter(workdir) if jax.process_index() == 0 else None
  total = config.train.num_steps
  step = int(state.step)
  progress = Progress(start_step=step, total_steps=total)
  end = total if stop_after is None else min(total, step + stop_after)

  try:
    with _Preemption() as preempt, run.context():
      while step < end and not preempt.requested:
        batch = pipeline.to_global(run.family.host_batch(run, next(data_iter)), batch_sh)
        state, metrics = step_fn(state, batch)
        step += 1
        if step % config.train.log_every == 0 or step == end:
          _report(run, state, metrics, step, progress, writer)
        if config.train.sample_every and step % config.train.sample_every == 0 and step < total:
          write_samples(run, state, workdir, step, writer)
        ckpt.save(step, state, data_iter, config)
      if preempt.requested:
        log.warning("%s received: saving a checkpoint at step %d and exiting", preempt.requested, step)
      if step not in ckpt.all_steps():
        ckpt.save(step, state, data_iter, config, force=True)
      ckpt.wait()
      if step >= total and not preempt.requested:
        write_samples(run, state, workdir, step, writer)
  finally:
    ckpt.close()
    if writer:
      writer.close()
  log.info("done at step %d in %.1fs", step, time.time() - t_start)
  return state


def _report(run, state, metrics, step, progress, writer):
  """Host-side logging every log_every steps; aborts on too many consecutive non-finite steps."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  bad = int(jax.device_get(state.bad_steps))
  if bad > run.config.train.max_bad_steps:
    raise FloatingPointError(f"{bad} consecutive steps with a non-finite loss or gradient at step {step}; "
                             "no non-finite update was applied, the latest checkpoint holds the last good state")
  m["lr"] = float(run.lr_fn(step))
  log.info(progress.update(step, m))
  if writer:
    writer.scalars(step, {**m, "steps_per_s": progress.rate()})


def write_samples(run, state, workdir, step, writer=None, seed=0):
  """The family's training samples (text to video: config.sample.prompts) from the EMA parameters, into
  workdir/samples/step_<N>.{gif,npz}; step_<N>.json lists the prompts and, for an expert, the split that
  sampled them."""
  try:
    videos, prompts, info = generate.generator_class(run.config).from_run(run, state, step).training_samples(seed)
  except generate.SamplesUnavailable as e:
    log.info("no training samples at step %d: %s", step, e)
    return None
  if jax.process_index() != 0:
    return videos
  out = pathlib.Path(workdir) / "samples"
  out.mkdir(parents=True, exist_ok=True)
  video_io.write_videos(out / f"step_{step}.gif", videos, prompts, scale=2)
  video_io.write_videos(out / f"step_{step}.npz", videos, prompts)
  (out / f"step_{step}.json").write_text(json.dumps({"prompts": prompts, "step": step, **info}, indent=1))
  if writer:
    writer.videos(step, videos, prompts)
  log.info("wrote %d sample videos to %s", len(prompts), out / f"step_{step}.gif")
  return videos
