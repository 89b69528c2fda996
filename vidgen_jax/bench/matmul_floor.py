"""The matmul floor of a jitted function: every dot and convolution it runs, each timed alone on this machine.

A train step cannot run faster than its matrix products, and on a CPU each product runs at a rate set by its
shape (a (1280, 128) x (128, 128) product reaches well under half the rate of a 2048^3 one). This reads the
dots and convolutions off the lowered HLO, times one jitted `lax.dot_general` / `lax.conv_general_dilated`
per distinct (shapes, dtypes, dimension numbers, window) on arrays of those shapes, and sums time x count.
The sum is what XLA's own kernels need for the step's products with nothing else in the step: a speed-up
claim below it would need faster matmuls or convolutions than XLA's.
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
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_GROUPS = re.compile(r"(feature_group_count|batch_group_count)=(\d+)")


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

  def canonical(self) -> "Dot":
    """The same product with operands laid out (batch, M, K) x (batch, K, N), or (M, K) x (K, N) without batch
    dimensions: the layout XLA's kernel takes without transposing. The HLO's own layout can be far slower
    alone (VDM-S's (32768 x 8 x 32)-batched attention products: 2x) although the compiled step lays its
    operands out as it likes, so the floor times both and keeps the faster."""
    (lc, rc), (lb, rb) = self.contracting, self.batch
    size = lambda shape, dims: int(np.prod([shape[i] for i in dims]))
    free = lambda shape, dims: int(np.prod([s for i, s in enumerate(shape) if i not in dims]))
    b, k = size(self.lhs, lb), size(self.lhs, lc)
    m, n = free(self.lhs, lc + lb), free(self.rhs, rc + rb)
    if lb:
      return dataclasses.replace(self, lhs=(b, m, k), rhs=(b, k, n), contracting=((2,), (1,)), batch=((0,), (0,)))
    return dataclasses.replace(self, lhs=(m, k), rhs=(k, n), contracting=((1,), (0,)), batch=((), ()))


@dataclasses.dataclass(frozen=True)
class Conv:
  """One convolution as HLO states it: operand shapes and dtypes, result shape and dtype, the window
  (size, stride, padding, lhs and rhs dilation per spatial dimension), dim_labels and group counts."""
  lhs: tuple
  rhs: tuple
  lhs_dtype: str
  rhs_dtype: str
  out: tuple
  out_dtype: str
  strides: tuple
  padding: tuple       # ((lo, hi), ...)
  lhs_dilation: tuple
  rhs_dilation: tuple
  dim_labels: tuple    # e.g. ('b01f', '01io', 'b01f')
  feature_group_count: int = 1
  batch_group_count: int = 1

  def dimension_numbers(self) -> jax.lax.ConvDimensionNumbers:
    lhs, rhs, out = self.dim_labels
    spatial = lambda labels: tuple(labels.index(str(i)) for i in range(len(labels) - 2))
    return jax.lax.ConvDimensionNumbers(
        (lhs.index("b"), lhs.index("f")) + spatial(lhs), (rhs.index("o"), rhs.index("i")) + spatial(rhs),
        (out.index("b"), out.index("f")) + spatial(out))

  def jitted(self):
    """The convolution alone (a reversed kernel, `rhs_reversal`, costs the same and is left out)."""
    return jax.jit(lambda a, b: jax.lax.conv_general_dilated(
        a, b, self.strides, self.padding, self.lhs_dilation, self.rhs_dilation, self.dimension_numbers(),
        self.feature_group_count, self.batch_group_count, preferred_element_type=_DTYPES[self.out_dtype]))


def _ints(text, sep="x"):
  return tuple(int(v) for v in text.split(sep))


def _conv(lhs, rhs, out, attrs: str) -> Conv:
  window = dict(item.split("=") for item in _WINDOW.search(attrs).group(1).split())
  rank = len(window["size"].split("x"))
  ones = (1,) * rank
  padding = tuple(_ints(p, "_") for p in window["pad"].split("x")) if "pad" in window else ((0, 0),) * rank
  groups = {k: int(v) for k, v in _GROUPS.findall(attrs)}
  return Conv(lhs[1], rhs[1], lhs[0], rhs[0], out[1], out[0],
              _ints(window["stride"]) if "stride" in window else ones, padding,
              _ints(window["lhs_dilate"]) if "lhs_dilate" in window else ones,
              _ints(window["rhs_dilate"]) if "rhs_dilate" in window else ones,
              _DIM_LABELS.search(attrs).groups(), groups.get("feature_group_count", 1),
              groups.get("batch_group_count", 1))


def _dot(lhs, rhs, out, attrs: str) -> Dot:
  dims = {k: tuple(int(x) for x in v.split(",") if x) for k, v in _DIMS.findall(attrs)}
  return Dot(lhs[1], rhs[1], lhs[0], rhs[0], out[0],
             (dims.get("lhs_contracting_dims", ()), dims.get("rhs_contracting_dims", ())),
             (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())))


_READERS = {"dot": _dot, "convolution": _conv}


def products(hlo_text: str) -> collections.Counter:
  """{Dot or Conv: how many times it occurs} in HLO text (`jitted.lower(...).as_text(dialect='hlo')`)."""
  shapes, found = {}, []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, dtype, dims, op, rest = m.groups()
    shapes[name] = (dtype, tuple(int(d) for d in dims.split(",") if d))
    if op in _READERS:
      args, attrs = rest.split(")", 1)   # 'a.1, b.2' or, with operand types inline, 'f32[2,3]{1,0} %a.1, ...'
      operands = re.findall(r"%([\w.\-]+)", args) if "%" in args else [a.strip() for a in args.split(",")]
      found.append((op, operands, shapes[name], attrs))
  out = collections.Counter()
  for op, operands, result, attrs in found:
    if len(operands) != 2 or any(o not in shapes for o in operands):
      raise ValueError(f"cannot read the operands of a {op} in the HLO text: {operands}")
    out[_READERS[op](shapes[operands[0]], shapes[operands[1]], result, attrs)] += 1
  return out


def dots(hlo_text: str) -> collections.Counter:
  """{Dot: how many times it occurs} in HLO text."""
  return collections.Counter({p: n for p, n in products(hlo_text).items() if isinstance(p, Dot)})


def time_product(product, reps: int = 7) -> tuple[float, float]:
  """(median seconds, FLOPs) of one `product` on this backend, operands already on the device: a Dot in the
  faster of its HLO layout and `Dot.canonical`, a Conv as the HLO states it. A Conv's FLOPs are XLA's cost
  analysis of it alone (padding and dilation holes not counted), a Dot's its formula."""
  if isinstance(product, Dot):
    canonical = product.canonical()
    if canonical != product:
      return min(_time_alone(product, reps), _time_alone(canonical, reps))
  return _time_alone(product, reps)


def _time_alone(product, reps):
  a, b = jnp.ones(product.lhs, _DTYPES[product.lhs_dtype]), jnp.ones(product.rhs, _DTYPES[product.rhs_dtype])
  fn = product.jitted()
  shape = jax.eval_shape(fn, a, b).shape
  if isinstance(product, Conv) and shape != product.out:
    raise ValueError(f"the convolution rebuilt from HLO gives shape {shape}, HLO says {product.out}: {product}")
  compiled, flops = timing.compile_counting_flops(fn, a, b)
  if isinstance(product, Dot):
    flops = product.flops
  return timing.median_seconds(lambda: compiled(a, b), warmup=2, reps=reps)[0], float(flops or 0.0)


def matmul_floor(jitted, *args, reps: int = 7) -> dict:
  """The dots and convolutions `jitted(*args)` runs, each timed alone (module doc): {'seconds', 'flops', 'dots',
  'convolutions', 'distinct', 'conv_seconds', 'conv_flops'}; the first two cover both kinds."""
  return floor_of(products(jitted.lower(*args).as_text(dialect="hlo")), reps)


def floor_of(found: collections.Counter, reps: int = 7) -> dict:
  """`matmul_floor` of products already read off the HLO (`products`)."""
  totals = collections.Counter()
  for product, n in found.items():
    seconds, flops = time_product(product, reps)
    kind = "conv" if isinstance(product, Conv) else "dot"
    totals[kind + "_seconds"] += n * seconds
    totals[kind + "_flops"] += n * flops
    totals[kind + "s"] += n
  return {"seconds": totals["dot_seconds"] + totals["conv_seconds"],
          "flops": totals["dot_flops"] + totals["conv_flops"], "dots": totals["dots"],
          "convolutions": totals["convs"], "distinct": len(found),
          "conv_seconds": float(totals["conv_seconds"]), "conv_flops": float(totals["conv_flops"])}


def torch_spec(found: collections.Counter) -> dict:
  """The float32 products of `found` (from `products`) in the form `torch_products.py` times them: canonical
  dots, and each forward convolution (NHWC x HWIO; the step's input- and kernel-gradient convolutions are
  its backward pass) with whether the step also takes its input gradient. Other dtypes and layouts are
  left out and counted in 'skipped'."""
  dots, convs, skipped = [], [], 0
  input_grads = {p.out for p in found if isinstance(p, Conv) and p.dim_labels == ("b01f", "01oi", "b01f")}
  for product, n in found.items():
    if {product.lhs_dtype, product.rhs_dtype} != {"f32"}:
      skipped += n
    elif isinstance(product, Dot):
      canon = product.canonical()
      dots.append({"lhs": list(canon.lhs), "rhs": list(canon.rhs), "n": n})
    elif product.dim_labels == ("b01f", "01io", "b01f") and product.rhs_dilation == (1, 1):
      convs.append({"lhs": list(product.lhs), "rhs": list(product.rhs), "out": list(product.out),
                    "strides": list(product.strides), "padding": [list(p) for p in product.padding],
                    "lhs_dilation": list(product.lhs_dilation), "input_grad": product.lhs in input_grads,
                    "n": n})
    elif product.dim_labels[1] not in ("01oi", "i01o"):   # gradients are timed with their forward conv
      skipped += n
  return {"dots": dots, "convs": convs, "skipped": skipped}
