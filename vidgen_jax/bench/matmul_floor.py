"""The matmul floor of a jitted function: every dot it runs, each timed alone on this machine.

A train step cannot run faster than its matrix products, and on a CPU each product runs at a rate set by its
shape (a (1280, 128) x (128, 128) product reaches well under half the rate of a 2048^3 one). This reads the
dots off the lowered HLO, times one jitted `lax.dot_general` per distinct (shapes, dtypes, dimension numbers)
on arrays of those shapes, and sums time x count. The sum is what XLA's own dot kernels need for the step's
matmuls with nothing else in the step: a speed-up claim below it would need faster matmuls than XLA's.
"""
import collections
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.bench import timing

_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "f64": jnp.float64}
# `name = f32[2,3]{1,0} op(...)`, with or without '%' sigils and 'ROOT'.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\((.*)$")
_DIMS = re.compile(r"(lhs_batch_dims|rhs_batch_dims|lhs_contracting_dims|rhs_contracting_dims)=\{([\d,]*)\}")


@dataclasses.dataclass(frozen=True)
class Dot:
  """One dot_general: operand shapes and dtypes, result dtype, (contracting, batch) dimension numbers."""
  lhs: tuple
  rhs: tuple
  lhs_dtype: str
  rhs_dtype: str
  out_dtype: str
  contracting: tuple   # (lhs dims, rhs dims)
  batch: tuple         # (lhs dims, rhs dims)

  @property
  def flops(self) -> float:
    (lc, _), (lb, _) = self.contracting, self.batch
    free_lhs = [s for i, s in enumerate(self.lhs) if i not in lc and i not in lb]
    free_rhs = [s for i, s in enumerate(self.rhs) if i not in self.contracting[1] and i not in self.batch[1]]
    return 2.0 * float(np.prod([self.lhs[i] for i in lc + lb] + free_lhs + free_rhs))

  def jitted(self):
    dims = (self.contracting, self.batch)
    return jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=_DTYPES[self.out_dtype]))


def dots(hlo_text: str) -> collections.Counter:
  """{Dot: how many times it occurs} in HLO text (`jitted.lower(...).as_text(dialect='hlo')`)."""
  shapes, found = {}, []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, dtype, dims, op, rest = m.groups()
    shapes[name] = (dtype, tuple(int(d) for d in dims.split(",") if d))
    if op == "dot":
      args = rest.split(")", 1)[0]   # 'a.1, b.2' or, with operand types inline, 'f32[2,3]{1,0} %a.1, ...'
      operands = re.findall(r"%([\w.\-]+)", args) if "%" in args else [a.strip() for a in args.split(",")]
      found.append((operands, dtype, dict(_DIMS.findall(rest))))
  out = collections.Counter()
  for operands, dtype, attrs in found:
    if len(operands) != 2 or any(o not in shapes for o in operands):
      raise ValueError(f"cannot read the operands of a dot in the HLO text: {operands}")
    (ldt, lhs), (rdt, rhs) = shapes[operands[0]], shapes[operands[1]]
    dims = {k: tuple(int(x) for x in v.split(",") if x) for k, v in attrs.items()}
    out[Dot(lhs, rhs, ldt, rdt, dtype, (dims.get("lhs_contracting_dims", ()), dims.get("rhs_contracting_dims", ())),
            (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())))] += 1
  return out


def time_dot(dot: Dot, reps: int = 7) -> float:
  """Median seconds of one `dot` on this backend, operands already on the device."""
  f = dot.jitted()
  a, b = jnp.ones(dot.lhs, _DTYPES[dot.lhs_dtype]), jnp.ones(dot.rhs, _DTYPES[dot.rhs_dtype])
  return timing.median_seconds(lambda: f(a, b), warmup=2, reps=reps)[0]


def matmul_floor(jitted, *args, reps: int = 7) -> dict:
  """{'seconds', 'flops', 'dots', 'distinct'} of the dots `jitted(*args)` runs, each timed alone (module doc)."""
  found = dots(jitted.lower(*args).as_text(dialect="hlo"))
  if not found:
    return {"seconds": 0.0, "flops": 0.0, "dots": 0, "distinct": 0}
  seconds = sum(n * time_dot(d, reps) for d, n in found.items())
  return {"seconds": seconds, "flops": sum(n * d.flops for d, n in found.items()), "dots": sum(found.values()),
          "distinct": len(found)}
