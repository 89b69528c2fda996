"""Benchmarks run by `vidgen bench NAME` (configs of DESIGN.md, side by side with the PyTorch references)."""
import importlib

# name -> module (each has run(reps=..., torch_python=..., with_reference=..., ...) -> list of JSON records)
BENCHMARKS = {"vdm-s": "vdm_s", "cvivit-s": "cvivit_s", "maskgit-s": "maskgit_s"}


def run(name: str, **kwargs) -> list:
  """The records of benchmark `name` (one of BENCHMARKS), each a dict ready for one JSON line."""
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
  return importlib.import_module(f"vidgen_jax.bench.{BENCHMARKS[name]}").run(**kwargs)
