"""Plumbing shared by the benchmarks of DESIGN.md (vdm-s, cvivit-s, maskgit-s): configs, JSON records, and the
PyTorch reference timed in a subprocess (its own interpreter: `--torch-python`)."""
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

from vidgen_jax import configs
from vidgen_jax.bench import matmul_floor, timing
from vidgen_jax.train.state import COMPUTE_DTYPES as DTYPES   # --compute-dtype: the layers' matmuls

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def configs_dir(probe: str = "vdm_shapes.py") -> str:
  """The repository's configs/ folder (beside the package, or under the working directory)."""
  for candidate in (os.path.join(BENCH_DIR, "..", "..", "configs"), os.path.join(os.getcwd(), "configs")):
    if os.path.exists(os.path.join(candidate, probe)):
      return os.path.normpath(candidate)
  raise FileNotFoundError(f"configs/{probe} not found (run from the repository root)")


def load_config(spec: str):
  """'file.py:args' of configs/ (e.g. 'cvivit_shapes.py:variant=S') as a ConfigDict."""
  return configs.load_config_file(os.path.join(configs_dir(spec.partition(":")[0]), spec))


def single_device(config):
  """One device, nothing sharded: the benchmarks time one CPU (or one accelerator)."""
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  return config


def time_train_step(run, state, batch, *, reps: int, warmup: int = 2):
  """Times `run.jit_train_step()`, the step training runs (state donated), on a batch already on its devices.

  Returns (median seconds, FLOPs of one step from the compiled cost analysis or None, the state after)."""
  batch = jax.device_put(batch, {k: run.batch_shardings()[k] for k in batch})
  step, flops = timing.compile_counting_flops(run.jit_train_step(), state, batch)
  holder = {"state": state}

  def once():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics
  seconds, _ = timing.median_seconds(once, warmup=warmup, reps=reps)
  return seconds, flops, holder["state"]


def floor_fields(jitted, *args, reps: int = 7, torch_python=None) -> dict:
  """{'matmul_floor_s', 'matmul_floor_flops', 'matmul_floor_conv_s'}: the dots and convolutions of
  `jitted(*args)`, each timed alone (bench/matmul_floor.py); the conv part is also given alone. With
  `torch_python`, also 'reference_matmul_floor_s': the same products with torch's kernels in that
  interpreter (`torch_products.py`; left out, with the reason logged, when it cannot run)."""
  found = matmul_floor.products(jitted.lower(*args).as_text(dialect="hlo"))
  floor = matmul_floor.floor_of(found, reps=reps)
  fields = {"matmul_floor_s": round(floor["seconds"], 5), "matmul_floor_flops": floor["flops"],
            "matmul_floor_conv_s": round(floor["conv_seconds"], 5)}
  if torch_python:
    spec = matmul_floor.torch_spec(found)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
      json.dump(spec, f)
    try:
      out, why = run_reference("torch_products.py", [f.name, "--reps", reps], torch_python)
    finally:
      os.unlink(f.name)
    if out is None:
      print(f"torch products not timed: {why}", file=sys.stderr)
    else:
      fields["reference_matmul_floor_s"] = round(out["dot_s"] + out["conv_s"], 5)
      fields["reference_matmul_floor_conv_s"] = round(out["conv_s"], 5)
  return fields


def floor_python(torch_python, with_reference: bool, compute_dtype: str):
  """The interpreter that times the products with torch's kernels: the reference's (default: this one) when
  the reference runs, in float32 (torch_products.py times float32 only); None otherwise."""
  return (torch_python or sys.executable) if with_reference and compute_dtype == "float32" else None


def train_step_matmul_floor(run, state, batch, *, reps: int = 7, torch_python=None) -> dict:
  """`floor_fields` of the train step. Call before timing the step, whose donation consumes `state`."""
  batch = jax.device_put(batch, {k: run.batch_shardings()[k] for k in batch})
  return floor_fields(run.jit_train_step(), state, batch, reps=reps, torch_python=torch_python)


def dtype(compute_dtype: str):
  """The jnp dtype of a --compute-dtype name (float32, bfloat16), or a ValueError naming the choices."""
  if compute_dtype not in DTYPES:
    raise ValueError(f"compute_dtype={compute_dtype!r}: choose one of {', '.join(DTYPES)}")
  return DTYPES[compute_dtype]


def reference_flags(compute_dtype: str) -> list:
  """Reference-script flags matching our compute dtype: bfloat16 runs the reference under torch's CPU bfloat16
  autocast, so the side-by-side compares like with like."""
  return ["--bf16"] if dtype(compute_dtype) == DTYPES["bfloat16"] else []


def reference_label(package: str, reference) -> str | None:
  """'package, torch X, N threads[, bf16 autocast]' for a reference result, None without one."""
  if not reference:
    return None
  return (f"{package}, torch {reference['torch']}, {reference['threads']} threads"
          + (", bf16 autocast" if reference.get("bf16_autocast") else ""))


def reference_seconds(out: dict, **kinds) -> dict:
  """{kind: median seconds of out[key]} for kinds=key pairs, plus the reference's torch, threads, autocast."""
  res = {kind: float(np.median(out[key])) for kind, key in kinds.items()}
  res.update(torch=out["torch"], threads=out["threads"], bf16_autocast=bool(out.get("bf16_autocast")))
  return res


def record(name, seconds, flops, **extra) -> dict:
  rec = {"name": name, "median_s": round(seconds, 5), "flops": flops,
         "flops_per_s": None if flops is None else flops / seconds}
  rec.update(extra)
  return rec


def run_reference(script: str, args, python=None, timeout=1800):
  """Runs `python script args...` (default: this interpreter) and returns (the JSON object of its last stdout
  line, None), or (None, why it could not run)."""
  python = python or sys.executable
  cmd = [python, os.path.join(BENCH_DIR, script)] + [str(a) for a in args]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except (OSError, subprocess.TimeoutExpired) as e:
    return None, f"reference not run: {e}"
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"reference unavailable ({python}): {last}"
  try:
    return json.loads(proc.stdout.strip().splitlines()[-1]), None
  except (IndexError, ValueError):
    return None, f"reference unavailable ({python}): no JSON result on stdout"


def attach(records, peak, reference=None, why="reference skipped", label="", unmatched=(), compute_dtype="float32"):
  """Adds the machine's matmul peak (and the fraction of it achieved) and the backend to every record and,
  per record kind (the part of the name after '/'), the reference's median seconds and our speed-up over
  it, or why there is none. Kinds listed in `unmatched` have no reference counterpart and get neither."""
  for rec in records:
    rec["compute_dtype"] = compute_dtype
    rec["peak_matmul_flops_per_s"] = peak
    if rec.get("flops_per_s") and peak:
      rec["fraction_of_peak"] = round(rec["flops_per_s"] / peak, 4)
    rec["backend"] = jax.default_backend()
    kind = rec["name"].split("/", 1)[1]
    if kind in unmatched:
      continue
    if reference and kind in reference:
      rec["reference_median_s"] = round(reference[kind], 5)
      rec["speedup_vs_reference"] = round(reference[kind] / rec["median_s"], 3)
      rec["reference"] = label
      if rec.get("matmul_floor_s"):   # the most any step could gain at XLA's product rates on this machine
        rec["speedup_bound_by_matmuls"] = round(reference[kind] / rec["matmul_floor_s"], 3)
    else:
      rec["reference"] = why
  return records
