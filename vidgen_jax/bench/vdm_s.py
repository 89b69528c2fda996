"""The VDM-S benchmark of DESIGN.md: Unet3D dim 32, dim_mults (1, 2, 4), cond_dim 64, batch 4 of 8 x 32 x 32.

Times our real train step (forward, backward, Adam, EMA: `vdm.train_step`, jitted as training does) and one
denoising step (one model call plus the DDIM update, `vdm.sample` with one step, no guidance), each with its
matmul floor (its dots and convolutions timed alone), and 4 videos sampled with 50 DDIM steps. The model is
configured as the reference: eps prediction, L1 loss, pooled-text FiLM conditioning only (no
cross-attention), float32. With torch and video-diffusion-pytorch importable by `torch_python` the reference
is timed in the same run (`torch_vdm_reference.py`) and the ratios printed, and the steps' products are
also timed with torch's kernels (`torch_products.py`: `reference_matmul_floor_s`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.bench import common, timing
from vidgen_jax.train import setup as setup_lib
from vidgen_jax.train import vdm

COND_DIM = 64
_REFERENCE_SCRIPT = "torch_vdm_reference.py"


class _CondOnly:
  """Stands in for a text encoder: the benchmark feeds random (B, 1, 64) condition vectors directly."""
  dim, max_length = COND_DIM, 1


def bench_config(batch: int = 4, compute_dtype: str = "float32"):
  c = common.load_config("vdm_shapes.py:variant=S")
  c.model.cross_attention = False
  c.model.text_cond_mlp = 0
  c.diffusion.prediction, c.diffusion.loss, c.diffusion.cfg_drop_prob = "eps", "l1", 0.0
  c.text.max_length = 1
  c.train.batch_size = batch
  c.train.compute_dtype = compute_dtype
  return common.single_device(c)


def _inputs(batch, frames, size, seed=0):
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8),
          "text_tokens": rng.standard_normal((batch, 1, COND_DIM)).astype(np.float32),
          "text_mask": np.ones((batch, 1), bool)}


def jax_records(batch=4, reps=10, sample_videos=True, compute_dtype="float32", with_floor=True, torch_python=None):
  """Records for our side: train step, one denoising step, and (optionally) 4 videos x 50 DDIM steps; the two
  steps with their matmul floor (`common.floor_fields`, with torch's for the same products when
  `torch_python` is given) unless `with_floor` is False."""
  config = bench_config(batch, compute_dtype)
  d = config.data
  run = setup_lib.build_run(config, text_encoder=_CondOnly(), devices=jax.devices()[:1])
  inputs = _inputs(batch, d.num_frames, d.image_size)
  records = []
  with run.context():
    state = run.init_state(0)
    floor = common.train_step_matmul_floor(run, state, inputs, torch_python=torch_python) if with_floor else {}
    seconds, flops, state = common.time_train_step(run, state, inputs, reps=reps)
    records.append(common.record("vdm-s/train_step", seconds, flops, batch=batch, **floor))

    params = state.ema_params
    tokens, mask = jnp.asarray(inputs["text_tokens"]), jnp.asarray(inputs["text_mask"])
    key = jax.random.key(0)
    one_step = vdm.make_sample_fn(run.model, run.sched, config, sampler="ddim", steps=1, cond_scale=1.0)
    floor = (common.floor_fields(one_step, params, key, tokens, mask, torch_python=torch_python)
             if with_floor else {})
    one, flops = timing.compile_counting_flops(one_step, params, key, tokens, mask)
    seconds, _ = timing.median_seconds(lambda: one(params, key, tokens, mask), reps=reps)
    records.append(common.record("vdm-s/denoise_step", seconds, flops, batch=batch, **floor))

    if sample_videos:
      full = vdm.make_sample_fn(run.model, run.sched, config, sampler="ddim", steps=50, cond_scale=1.0)
      seconds, _ = timing.median_seconds(lambda: full(params, key, tokens, mask), warmup=1, reps=3)
      records.append(common.record("vdm-s/sample_ddim50", seconds, None, batch=batch))
  return records


def reference_records(python=None, batch=4, reps=5, timeout=1800, compute_dtype="float32"):
  """The reference's train and denoise step times via `python` (default: this interpreter), or a reason."""
  out, why = common.run_reference(_REFERENCE_SCRIPT, ["--batch", batch, "--reps", reps]
                                  + common.reference_flags(compute_dtype), python, timeout)
  if out is None:
    return None, why
  return common.reference_seconds(out, train_step="train_s", denoise_step="denoise_s"), None


def run(reps=10, torch_python=None, with_reference=True, sample_videos=True, compute_dtype="float32"):
  """All records of `vidgen bench vdm-s`, each a dict ready for one JSON line."""
  peak = timing.matmul_peak_flops_per_s(dtype=common.dtype(compute_dtype))
  records = jax_records(reps=reps, sample_videos=sample_videos, compute_dtype=compute_dtype,
                        torch_python=common.floor_python(torch_python, with_reference, compute_dtype))
  reference, why = (reference_records(torch_python, compute_dtype=compute_dtype) if with_reference
                    else (None, "reference skipped"))
  label = common.reference_label("video-diffusion-pytorch 0.7.0", reference)
  return common.attach(records, peak, reference, why, label, unmatched=("sample_ddim50",),
                       compute_dtype=compute_dtype)
