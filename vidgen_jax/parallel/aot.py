"""Ahead-of-time plans: the real train step compiled for a device set that need not be attached.

    vidgen compile --config configs/vdm_shapes.py:variant=L --topology v5p:2x2x2 [--preset data,fsdp,fsdp_tensor]

The devices come from `jax.experimental.topologies` (TPU: compile-only devices of a named slice, needs the
`libtpu` wheel, `pip install -e .[tpu-aot]`, but no TPU) or are the local CPU devices (`cpu:N`, used by the
tests). Nothing is materialised: the train state and the batch are `ShapeDtypeStruct`s that carry their
`NamedSharding`s, and `Run.jit_train_step()` (the function `vidgen train` runs) is lowered and compiled for
them. The record of one compile holds XLA's per-chip memory figures, the parameter + optimizer bytes that the
shardings put on one chip, XLA's FLOP count and the step time it implies at a stated utilisation.

Per-chip, not global: with SPMD partitioning XLA compiles one program that every device runs, and both
`memory_analysis()` and `cost_analysis()` describe that program, i.e. one chip's share (checked in
tests/test_aot.py: a matmul split over 8 devices reports 1/8 of its FLOPs, on CPU and on a TPU topology).

Measured (libtpu 0.0.42.1, jax 0.10.2, on a 2-core CPU host): U-Net L (893.5M parameters with the 384-d
MiniLM text width), 16 x 64 x 64 video, bfloat16 compute, global batch 32, v5p:2x2x2 (8 chips):

  preset       mesh      remat  temp GiB  total GiB  state GiB/chip  TFLOP/chip  step s @40%  compile s
  fsdp_tensor  f4 x t2   off    50.0      52.2       1.67            65.0        0.35         535
  fsdp_tensor  f4 x t2   on     23.6      25.9       1.67            83.2        0.45         1038
  fsdp         f8        off    52.6      55.0       1.67            37.9        0.21         619

The remat-off rows are from stop 34, after the temporal attention stopped merging frames into the sharded
batch (before: fsdp_tensor 54.2 / 56.4 GiB, fsdp 53.6 / 55.9 GiB and 38.6 TFLOP) and with conv kernels
gathered over their inputs under tensor parallelism (an XLA gradient bug's workaround, layers/conv.py); the
remat row is from before. libtpu 0.0.52 gives the same fsdp_tensor figures (49.9 / 52.2 GiB, 65.0 TFLOP)
but aborts compiling fsdp, hence the `.[tpu-aot]` pin (setup.py).

Params + EMA + Adam are 13.31 GiB replicated (preset data); fsdp=8 puts 0.1252 of that on a chip (only
norm gains, biases and the 3-channel input conv stay replicated, 0.03% of the parameters). Remat cuts the
temporaries by 57% for +28% FLOPs. Global batch 256 (32 per chip) under data parallelism without remat
does not fit: XLA:TPU needs 285.8 GiB of temporaries against 95.74 GiB (compile refused after 697 s).
"""
import dataclasses
import json
import math
import os
import pathlib
import re
import time

import jax
import numpy as np

GIB = 2 ** 30

# Per-chip peak dense bf16 throughput and HBM capacity, from the Cloud TPU system-architecture pages
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): v4 275 TFLOP/s, 32 GiB; v5e 197 TFLOP/s, 16 GB;
# v5p 459 TFLOP/s, 95 GB; v6e (Trillium) 918 TFLOP/s, 32 GB. The pages mix GB and GiB; we read every
# capacity as GiB, and for v5p use the 95.74 GiB that libtpu's compiler itself reports as available HBM
# (in its out-of-memory message), so that `fits` agrees with the compiler.
# `chip_config` 'megacore' makes one compile device per chip on v4/v5p (two TensorCores acting as one), so
# "per device" below is always "per chip".


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_bf16_flops: float   # per chip, FLOP/s
  hbm_bytes: int           # per chip
  chip_config: str         # chip_config_name for jax.experimental.topologies


CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GIB, "megacore"),
    "v5e": Chip("v5e", 197e12, 16 * GIB, "default"),
    "v5p": Chip("v5p", 459e12, int(95.74 * GIB), "megacore"),
    "v6e": Chip("v6e", 918e12, 32 * GIB, "default"),
}

# (preset, mesh degrees): data parallel over every chip; fsdp over every chip; fsdp x tensor.
PRESETS = ("data", "fsdp", "fsdp_tensor")

_TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
_CPU_RE = re.compile(r"^cpu(?::(\d+))?$")


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for: a named TPU slice (`v5p:2x2x2`) or the local CPU devices (`cpu`, `cpu:8`)."""
  spec: str
  platform: str            # 'tpu' | 'cpu'
  chip: Chip | None        # None for CPU (no peak or HBM figure unless given)
  topology: str = ""       # e.g. '2x2x2'
  num_cpu: int | None = None

  @property
  def num_chips(self) -> int:
    if self.platform == "cpu":
      return self.num_cpu or len(jax.devices("cpu"))
    return math.prod(int(n) for n in self.topology.split("x"))


def parse_target(spec: str) -> Target:
  spec = spec.strip()
  m = _TOPOLOGY_RE.match(spec)
  if m:
    return Target(spec, "tpu", CHIPS[m.group(1)], m.group(2))
  m = _CPU_RE.match(spec)
  if m:
    return Target(spec, "cpu", None, num_cpu=int(m.group(1)) if m.group(1) else None)
  raise ValueError(f"--topology {spec!r} unknown: expected GENERATION:SHAPE with GENERATION one of "
                   f"{', '.join(CHIPS)} and SHAPE chips per axis (v5p:2x2x2 = 8 chips, v5e:4x4 = 16 chips, "
                   "v4:2x2x1 = 4 chips), or cpu[:N] for the local CPU devices")


def have_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def quiet_libtpu_env():
  """Off a TPU VM libtpu looks for the VM's metadata and warns at length; compile-only use needs none of it.

  Set before libtpu is first loaded; values a TPU VM already has are kept.
  """
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes /tmp/libtpu_lockfile for exclusive use of the chips; compiling touches no chip, so it must
  # not fail because another process (a training run on a TPU VM) holds the lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def target_devices(target: Target) -> list:
  """The devices to compile for: compile-only TPU devices of the slice, or the local CPU devices."""
  if target.platform == "cpu":
    devices = jax.devices("cpu")
    n = target.num_cpu or len(devices)
    if n > len(devices):
      raise ValueError(f"--topology {target.spec}: only {len(devices)} CPU devices here; set XLA_FLAGS="
                       f"--xla_force_host_platform_device_count={n} before jax starts (vidgen compile does)")
    return devices[:n]
  if not have_libtpu():
    raise RuntimeError(f"--topology {target.spec} needs the libtpu wheel (compile-only, no TPU needed): "
                       "pip install -e .[tpu-aot]")
  quiet_libtpu_env()
  from jax.experimental import topologies
  name = f"{target.chip.name}:{target.topology}"
  kwargs = {"chip_config_name": target.chip.chip_config}
  dims = [int(n) for n in target.topology.split("x")] + [1]
  if dims[0] % 2 or dims[1] % 2:  # smaller than one host's 2x2 chips (e.g. v5p:1x1x1): a host holds them all
    kwargs["chips_per_host_bounds"] = (min(dims[0], 2), min(dims[1], 2), 1)
  try:
    desc = topologies.get_topology_desc(name, "tpu", **kwargs)
  except Exception as e:  # noqa: BLE001 - libtpu raises JaxRuntimeError / ValueError with its own text
    raise ValueError(f"--topology {target.spec}: libtpu rejected it ({str(e).splitlines()[0]})") from None
  if len(desc.devices) != target.num_chips:
    raise ValueError(f"--topology {target.spec}: expected {target.num_chips} chips, libtpu made "
                     f"{len(desc.devices)} devices")
  return list(desc.devices)


def preset_config(config, preset: str, num_devices: int, *, tensor: int = 2, remat: bool | None = None):
  """A copy of `config` laid out for `preset` on `num_devices` chips (and with model.remat if given).

  data: mesh data=N, parameters replicated. fsdp: mesh fsdp=N, parameters sharded N ways.
  fsdp_tensor: mesh fsdp=N/tensor x tensor, heads / MLP / conv outputs over `tensor` as well.
  'config' keeps the config's own mesh and sharding preset.
  """
  c = config.copy_and_resolve_references()
  if preset == "data":
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  elif preset == "fsdp":
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  elif preset == "fsdp_tensor":
    if num_devices % tensor:
      raise ValueError(f"preset fsdp_tensor: {num_devices} chips are not divisible by --tensor {tensor}")
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, tensor
  elif preset != "config":
    raise ValueError(f"preset {preset!r} unknown; choose from {', '.join(PRESETS + ('config',))}")
  if preset != "config":
    c.sharding.preset = preset
  if remat is not None:
    c.model.remat = bool(remat)
  return c


class ShapeOnlyTextEncoder:
  """Stands in for the text encoder when only the width of its tokens matters (the train step's inputs)."""

  def __init__(self, dim: int, max_length: int, name: str = "shape-only"):
    self.dim, self.max_length, self.name = dim, max_length, name

  def encode(self, texts):
    raise RuntimeError("ShapeOnlyTextEncoder cannot encode; it only carries the token width")

  def prefill(self, texts):
    pass


def text_dim(config) -> int:
  """Token width of the config's text encoder, read from its config.json (no weights are loaded)."""
  from vidgen_jax.text import encoder as text_lib
  t = config.text
  path = t.path or (text_lib._minilm_path() if t.encoder == "minilm" else None)
  if not path:
    raise ValueError(f"text.path is empty but text.encoder={t.encoder!r} needs a checkpoint directory")
  cfg = json.loads((pathlib.Path(path) / "config.json").read_text())
  return int(cfg.get("d_model") or cfg["hidden_size"])


def abstract_batch(run) -> dict:
  """The train step's batch as ShapeDtypeStructs with the batch shardings (global shapes)."""
  c = run.config
  b, d = c.train.batch_size, c.data
  sh = run.batch_shardings()   # the keys the family's step takes (text only for text-conditioned families)
  shapes = {"video": ((b, d.num_frames, d.image_size, d.image_size, 3), np.uint8)}
  if "text_tokens" in sh:
    shapes["text_tokens"] = ((b, c.text.max_length, run.text_encoder.dim), np.float32)
    shapes["text_mask"] = ((b, c.text.max_length), np.bool_)
  shapes["turn_frame"] = ((b,), np.int32)   # with data.reversal_prob > 0 only
  return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=sh[k]) for k in sh}


def lower_train_step(run):
  """Lowers `run.jit_train_step()` (the step `vidgen train` runs) for the abstract state and batch."""
  with run.context():
    return run.jit_train_step().lower(run.abstract_state, abstract_batch(run))


def _bytes_on_one_device(tree) -> int:
  """Bytes of the largest per-device share of a tree of sharded ShapeDtypeStructs (the busiest chip)."""
  per_device: dict = {}
  for leaf in jax.tree.leaves(tree):
    itemsize = np.dtype(leaf.dtype).itemsize
    shard_bytes = math.prod(leaf.sharding.shard_shape(leaf.shape)) * itemsize
    for dev in leaf.sharding.device_set:
      per_device[dev] = per_device.get(dev, 0) + shard_bytes
  return max(per_device.values()) if per_device else 0


def _bytes_whole(tree) -> int:
  return sum(math.prod(l.shape) * np.dtype(l.dtype).itemsize for l in jax.tree.leaves(tree))


def state_bytes(abstract_state) -> dict:
  """Parameter, EMA and optimizer bytes on one chip (from the shardings) and their unsharded totals."""
  parts = {"params": abstract_state.params, "ema": abstract_state.ema_params, "opt": abstract_state.opt_state}
  out = {}
  for name, tree in parts.items():
    out[f"{name}_bytes_per_chip"] = _bytes_on_one_device(tree)
    out[f"{name}_bytes_replicated"] = _bytes_whole(tree)
  out["state_bytes_per_chip"] = _bytes_on_one_device(list(parts.values()))
  out["state_bytes_replicated"] = sum(out[f"{n}_bytes_replicated"] for n in parts)
  return out


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def memory_figures(compiled) -> dict:
  """Per-chip bytes from XLA's buffer assignment. The donated state aliases into the output, so
  total = arguments + outputs - aliased + temporaries + generated code."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  args, outs, alias = m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes
  temp, code = m.temp_size_in_bytes, m.generated_code_size_in_bytes
  return {"argument_bytes": int(args), "output_bytes": int(outs), "alias_bytes": int(alias),
          "temp_bytes": int(temp), "generated_code_bytes": int(code),
          "total_bytes": int(args + outs - alias + temp + code)}


def plan(config, target: Target, devices, preset: str, *, remat: bool | None = None, tensor: int = 2,
         utilisation: float = 0.4, text_width: int | None = None, peak_flops: float | None = None,
         hbm_bytes: int | None = None) -> dict:
  """Compiles the train step for one (preset, remat) on `devices` and returns the record (a flat dict).

  Raises ValueError (a ConfigError listing every problem) when the config cannot run on this mesh, e.g. a
  batch not divisible by the data-parallel degree.
  """
  from vidgen_jax.train import setup as setup_lib
  from vidgen_jax.train import validation
  c = preset_config(config, preset, len(devices), tensor=tensor, remat=remat)
  validation.validate_vdm(c, len(devices))
  width = text_width if text_width is not None else text_dim(c)
  t0 = time.perf_counter()
  run = setup_lib.build_run(c, text_encoder=ShapeOnlyTextEncoder(width, c.text.max_length), devices=devices)
  lowered = lower_train_step(run)
  t1 = time.perf_counter()
  oom = None
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # XLA:TPU refuses to compile a program that does not fit; its message still carries the figures.
    oom = _oom_record(str(e))
    if oom is None:
      raise
    oom["compile_error"] = str(e).splitlines()[0][:300]
  t2 = time.perf_counter()

  num_params = sum(math.prod(l.shape) for l in jax.tree.leaves(run.abstract_state.params))
  peak = peak_flops if peak_flops is not None else (target.chip.peak_bf16_flops if target.chip else None)
  hbm = hbm_bytes if hbm_bytes is not None else (target.chip.hbm_bytes if target.chip else None)
  cost = _cost(compiled) if oom is None else {}
  flops = float(cost.get("flops", float("nan")))
  mem = memory_figures(compiled) if oom is None else {}
  rec = {
      "topology": target.spec,
      "chips": len(devices),
      "preset": preset if preset != "config" else c.sharding.preset,
      "mesh": dict(run.mesh.shape),
      "remat": bool(c.model.remat),
      "batch": int(c.train.batch_size),
      "batch_per_chip": c.train.batch_size / (run.mesh.shape["data"] * run.mesh.shape["fsdp"]),
      "grad_accum": int(c.train.grad_accum),
      "video": [int(c.data.num_frames), int(c.data.image_size), int(c.data.image_size)],
      "compute_dtype": c.train.compute_dtype,
      "num_params": int(num_params),
      **mem,
      **state_bytes(run.abstract_state),
      "flops_per_chip": flops,
      "bytes_accessed_per_chip": float(cost.get("bytes accessed", float("nan"))),
      "utilisation": utilisation,
      "peak_flops_per_chip": peak,
      "step_time_s": flops / (peak * utilisation) if peak and math.isfinite(flops) else None,
      "hbm_bytes": hbm,
      "fits": (mem["total_bytes"] <= hbm) if (hbm and mem) else None,
      "lower_s": round(t1 - t0, 2),
      "compile_s": round(t2 - t1, 2),
  }
  if oom is not None:
    rec.update(oom, step_time_s=None)
  if c.train.grad_accum > 1:
    rec["note"] = ("grad_accum > 1: the micro-batches run in a scanned loop; check flops_per_chip against "
                   "grad_accum=1, XLA's cost analysis may count a loop body once")
  return rec


def human_table(records) -> str:
  """A short fixed-width table of the records (GiB per chip; TFLOP per chip per step)."""
  head = (f"{'preset':<12}{'mesh':<16}{'remat':<6}{'b/chip':>7}{'params':>9}{'state/chip':>11}"
          f"{'state repl':>11}{'args':>8}{'temp':>8}{'total':>8}{'HBM':>6}{'fits':>6}{'TFLOP':>9}"
          f"{'step s':>8}{'compile s':>10}")
  lines = [head, "-" * len(head)]
  for r in records:
    if "error" in r:
      lines.append(f"{r['preset']:<12}{'':<16}{str(r.get('remat')):<6} error: {r['error']}")
      continue
    g = lambda k: f"{r[k] / GIB:.2f}" if r.get(k) is not None else "-"
    mesh = "x".join(f"{a[0]}{n}" for a, n in r["mesh"].items() if n > 1) or "1"
    step = f"{r['step_time_s']:.3f}" if r["step_time_s"] is not None else "-"
    hbm = f"{r['hbm_bytes'] / GIB:.0f}" if r["hbm_bytes"] else "-"
    fits = {True: "yes", False: "NO", None: "-"}[r["fits"]]
    lines.append(f"{r['preset']:<12}{mesh:<16}{'on' if r['remat'] else 'off':<6}{r['batch_per_chip']:>7g}"
                 f"{r['num_params'] / 1e6:>8.1f}M{g('state_bytes_per_chip'):>11}{g('state_bytes_replicated'):>11}"
                 f"{g('argument_bytes'):>8}{g('temp_bytes'):>8}{g('total_bytes'):>8}{hbm:>6}{fits:>6}"
                 f"{r['flops_per_chip'] / 1e12:>9.2f}{step:>8}{r['compile_s']:>10.1f}")
  return "\n".join(lines)


# --- one compile per child process -------------------------------------------------------------------------
# libtpu aborts the whole process on some internal compiler errors (a failed CHECK), and a large model's
# compile holds many GB of host memory; so `vidgen compile` runs each (preset, remat) in its own process and
# turns a crash into an error record.

# XLA:TPU's out-of-memory compile errors, in the two forms libtpu uses ('G' is GiB):
#   "... the total memory required for HLO temporaries (285.79G) exceeds available HBM (95.74G)."
#   "... Ran out of memory in memory space hbm. Used 120.50G of 95.74G hbm. ..."
_OOM_TEMP_RE = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)")
_OOM_USED_RE = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", re.I)
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _oom_record(message: str) -> dict | None:
  """Per-chip figures from XLA:TPU's out-of-memory compile error, or None for another error."""
  for regex, key in ((_OOM_TEMP_RE, "temp_bytes"), (_OOM_USED_RE, "total_bytes")):
    m = regex.search(message)
    if m:
      need = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
      limit = int(float(m.group(3)) * _UNITS[m.group(4).upper()])
      return {key: need, "hbm_bytes_compiler": limit, "fits": False}
  return None


def child_env(target: Target) -> dict:
  """Environment of a compile process: CPU as the attached platform (compiling for a TPU slice needs no
  TPU, and must not grab one a training job holds); N fake CPU devices for cpu:N."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  if target.platform == "cpu":
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={target.num_cpu or 1}")
    env["XLA_FLAGS"] = " ".join(flags)
  return env


def plan_in_subprocess(config, target: Target, preset: str, *, timeout: float | None = None, **kwargs) -> dict:
  """`plan(...)` in a fresh Python process; a crash or a compile error becomes {'error': ...}."""
  import subprocess
  import sys
  from vidgen_jax import configs
  request = json.dumps({"config": configs.to_json(config), "target": target.spec, "preset": preset, **kwargs})
  base = {"topology": target.spec, "preset": preset, "remat": kwargs.get("remat")}
  try:
    out = subprocess.run([sys.executable, "-m", "vidgen_jax.parallel.aot"], input=request, text=True,
                         capture_output=True, env=child_env(target), timeout=timeout)
  except subprocess.TimeoutExpired:
    return {**base, "error": f"compile did not finish in {timeout:.0f}s"}
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if out.returncode == 0 and lines:
    return json.loads(lines[-1])
  err = out.stderr.splitlines()
  why = next((l for l in err if "Check failed" in l), None) or next(
      (l for l in reversed(err) if "Error" in l or "error" in l), err[-1] if err else "no output")
  return {**base, "error": f"compile process exited with {out.returncode}: {why.strip()[:400]}"}


def _main():
  """Child side of plan_in_subprocess: one JSON request on stdin, one JSON record on stdout."""
  import sys
  from vidgen_jax import configs
  req = json.loads(sys.stdin.read())
  config = configs.from_json(req.pop("config"))
  target = parse_target(req.pop("target"))
  preset = req.pop("preset")
  base = {"topology": target.spec, "preset": preset, "remat": req.get("remat")}
  try:
    rec = plan(config, target, target_devices(target), preset, **req)
  except (ValueError, RuntimeError) as e:
    rec = {**base, "error": str(e)}
  print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  _main()
