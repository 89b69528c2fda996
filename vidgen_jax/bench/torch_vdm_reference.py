"""Times video-diffusion-pytorch 0.7.0 on the VDM-S benchmark; run as a script by `vidgen bench vdm-s`.

Standalone on purpose (imports torch, never vidgen_jax), so the reference can live in another interpreter:
`vidgen bench vdm-s --torch-python /path/to/venv/bin/python`. Prints one JSON object:
{"train_s": [...], "denoise_s": [...], "torch": version, "threads": n}.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_stubs import stub_torchvision  # noqa: E402  (the sibling file; this script never imports vidgen_jax)


def _times(fn, warmup, reps):
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--dim", type=int, default=32)
  p.add_argument("--dim-mults", default="1,2,4")
  p.add_argument("--cond-dim", type=int, default=64)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--bf16", action="store_true", help="forward passes under torch.autocast('cpu', bfloat16)")
  a = p.parse_args()

  import torch
  stub_torchvision()
  from video_diffusion_pytorch.video_diffusion_pytorch import GaussianDiffusion, Unet3D

  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  unet = Unet3D(dim=a.dim, dim_mults=tuple(int(m) for m in a.dim_mults.split(",")), cond_dim=a.cond_dim)
  diffusion = GaussianDiffusion(unet, image_size=a.size, num_frames=a.frames, timesteps=1000)
  opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
  video = torch.rand(a.batch, 3, a.frames, a.size, a.size)   # the reference takes [0, 1] video
  cond = torch.randn(a.batch, a.cond_dim)

  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)

  def train_step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = diffusion(video, cond=cond)
    loss.backward()
    opt.step()

  x = torch.randn(a.batch, 3, a.frames, a.size, a.size)
  t = torch.full((a.batch,), 500, dtype=torch.long)

  @torch.no_grad()
  def denoise_step():
    with autocast():
      diffusion.p_sample(x, t, cond=cond)

  print(json.dumps({"train_s": _times(train_step, a.warmup, a.reps),
                    "denoise_s": _times(denoise_step, a.warmup, a.reps),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16_autocast": a.bf16}))


if __name__ == "__main__":
  main()
