"""Times a step's matrix products with PyTorch's kernels; run as a script by `vidgen bench` (`--torch-python`).

Standalone on purpose (imports torch, never vidgen_jax). Reads the JSON written by
`matmul_floor.torch_spec`: dots as (batch, M, K) x (batch, K, N) or (M, K) x (K, N) products, and each forward
convolution (NHWC input, HWIO kernel; `lhs_dilation` 2 for a transposed one) with whether the step also takes
its input gradient. Dots are timed as `torch.bmm` / `torch.mm`, convolutions forward and backward through
autograd (channels-last; kernel gradient always, input gradient when asked), so the sum covers the same
products as XLA's floor. Prints one JSON object: {"dot_s", "conv_s", "torch", "threads"}.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_vdm_reference import _times  # noqa: E402  (the sibling script; neither imports vidgen_jax)


def _median(fn, warmup, reps):
  times = sorted(_times(fn, warmup, reps))
  return times[len(times) // 2]


def _conv_step(torch, conv):
  """A closure running the convolution forward and backward, and the NHWC shape of its output."""
  n, h, w, cin = conv["lhs"]
  kh, kw, _, cout = conv["rhs"]
  x = torch.ones(n, cin, h, w).to(memory_format=torch.channels_last).requires_grad_(conv["input_grad"])
  (p0, p1), (q0, q1) = conv["padding"]
  if list(conv["lhs_dilation"]) != [1, 1]:   # transposed conv: dilate by s, pad k-1-p, correlate
    sh, sw = conv["lhs_dilation"]
    kernel = torch.ones(cin, cout, kh, kw, requires_grad=True)
    fwd = lambda: torch.nn.functional.conv_transpose2d(x, kernel, stride=(sh, sw), padding=(kh - 1 - p0, kw - 1 - q0))
  else:
    if p0 != p1 or q0 != q1:
      raise ValueError(f"asymmetric padding {conv['padding']} has no torch conv2d equivalent")
    kernel = torch.ones(cout, cin, kh, kw, requires_grad=True)
    fwd = lambda: torch.nn.functional.conv2d(x, kernel, stride=tuple(conv["strides"]), padding=(p0, q0))
  out = fwd()
  grad = torch.ones_like(out)

  def step():
    fwd().backward(grad)
  return step, [out.shape[0], out.shape[2], out.shape[3], out.shape[1]]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("spec", help="JSON file written by matmul_floor.torch_spec")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--reps", type=int, default=7)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  a = p.parse_args()
  import torch
  torch.set_num_threads(a.threads)
  with open(a.spec) as f:
    spec = json.load(f)
  dot_s = 0.0
  for dot in spec["dots"]:
    lhs, rhs = torch.ones(dot["lhs"]), torch.ones(dot["rhs"])
    op = torch.bmm if len(dot["lhs"]) == 3 else torch.mm
    dot_s += dot["n"] * _median(lambda: op(lhs, rhs), a.warmup, a.reps)
  conv_s = 0.0
  for conv in spec["convs"]:
    step, shape = _conv_step(torch, conv)
    if shape != list(conv["out"]):
      raise ValueError(f"torch's convolution gives shape {shape}, the step's {conv['out']}: {conv}")
    conv_s += conv["n"] * _median(step, a.warmup, a.reps)
  print(json.dumps({"dot_s": dot_s, "conv_s": conv_s, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
