"""The CViViT-S benchmark of DESIGN.md: C-ViViT dim 128, LFQ codebook 4096, image 32, patch 4, temporal patch 2,
spatial and temporal depth 2, 4 heads of 32; batch 4 of 9 x 32 x 32.

Times our real train step (`train/cvivit.train_step`, jitted and donated as training does) without GAN or
perceptual loss: forward, reconstruction MSE + the LFQ's training losses, backward, AdamW with gradient
clipping, EMA. With torch and phenaki-pytorch importable by `torch_python` the reference is timed in the
same run (`torch_phenaki_reference.py cvivit`: `CViViT(use_vgg_and_gan=False)`, its reconstruction loss,
backward, clipping, AdamW) on the same shapes, and the ratio reported.
"""
import jax
import numpy as np

from vidgen_jax.bench import common, timing
from vidgen_jax.train import setup as setup_lib

REFERENCE_SCRIPT = "torch_phenaki_reference.py"


def bench_config(batch: int = 4, tiny: bool = False, compute_dtype: str = "float32"):
  """configs/cvivit_shapes.py:variant=S at `batch`, one device, no GAN nor perceptual loss. `tiny` shrinks
  everything (tests)."""
  c = common.load_config("cvivit_shapes.py:variant=S")
  c.loss.gan_weight, c.loss.perceptual_weight = 0.0, 0.0
  c.train.image_steps = 0
  c.train.batch_size = batch
  c.train.compute_dtype = compute_dtype
  if tiny:
    c.data.image_size, c.data.num_frames = 8, 3
    m = c.model
    m.dim, m.spatial_depth, m.temporal_depth, m.heads, m.dim_head, m.codebook_size = 16, 1, 1, 2, 8, 64
    c.loss.disc_base_dim, c.loss.disc_attn_resolutions = 2, ()
  return common.single_device(c)


def reference_args(config) -> list:
  """Arguments of the reference script for the same model and input as `config`."""
  m, d = config.model, config.data
  if m.spatial_depth != m.temporal_depth:
    raise ValueError("the reference benchmark script takes one depth for the spatial and temporal transformers")
  return ["--batch", config.train.batch_size, "--frames", d.num_frames, "--size", d.image_size,
          "--patch-size", m.patch_size, "--temporal-patch-size", m.temporal_patch_size, "--dim", m.dim,
          "--depth", m.spatial_depth, "--heads", m.heads, "--dim-head", m.dim_head,
          "--codebook-size", m.codebook_size]


def _inputs(config, seed=0):
  d = config.data
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (config.train.batch_size, d.num_frames, d.image_size, d.image_size, 3),
                                dtype=np.uint8)}


def jax_records(config, reps=10, torch_python=None):
  run = setup_lib.build_run(config, devices=jax.devices()[:1])
  with run.context():
    state, inputs = run.init_state(0), _inputs(config)
    floor = common.train_step_matmul_floor(run, state, inputs, torch_python=torch_python)
    seconds, flops, _ = common.time_train_step(run, state, inputs, reps=reps)
  return [common.record("cvivit-s/train_step", seconds, flops, batch=config.train.batch_size, **floor)]


def reference_records(config, python=None, reps=5, timeout=1800):
  """The reference's train step seconds {'train_step': median, ...} via `python`, or (None, why)."""
  out, why = common.run_reference(REFERENCE_SCRIPT, ["cvivit", "--reps", reps] + reference_args(config)
                                  + common.reference_flags(config.train.compute_dtype), python, timeout)
  if out is None:
    return None, why
  return common.reference_seconds(out, train_step="train_s"), None


def run(reps=10, torch_python=None, with_reference=True, tiny=False, reference_reps=None, compute_dtype="float32"):
  """All records of `vidgen bench cvivit-s`, each a dict ready for one JSON line."""
  config = bench_config(tiny=tiny, compute_dtype=compute_dtype)
  peak = timing.matmul_peak_flops_per_s(n=256 if tiny else 2048, dtype=common.dtype(compute_dtype))
  records = jax_records(config, reps=reps, torch_python=common.floor_python(
      torch_python, with_reference, compute_dtype))
  reference, why = (reference_records(config, torch_python, reps=reference_reps or reps) if with_reference
                    else (None, "reference skipped"))
  return common.attach(records, peak, reference, why, phenaki_label(reference), compute_dtype=compute_dtype)


def phenaki_label(reference):
  return common.reference_label("phenaki-pytorch 0.5.0", reference)
