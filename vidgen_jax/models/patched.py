"""Space-to-depth patching around a video denoiser: the network runs at (H/p, W/p) with p*p*C channels.

With p = 2 a 32x32 video costs the U-Net what a 16x16 one does (about 4x fewer FLOPs), which is what lets the
CPU demo train in minutes; the prediction is rearranged back to full resolution, so the diffusion maths is
unchanged. p = 1 is never wrapped, keeping the reference parameter layout.

`temporal_patch_size` pt > 1 also folds pt consecutive frames into one (tubelets, as C-ViViT's
spatio-temporal patches): the U-Net sees T/pt frames of pt*p*p*C channels, so the motion between the frames
of a tubelet is local to one position and the network costs about 1/pt as much. Everything that is defined
per frame of the U-Net (per-frame timesteps, joint-training image groups) then no longer maps onto video
frames and is refused.
"""
from typing import Any

import einops
import flax.linen as nn


def to_patches(x, p, pt=1):
  return einops.rearrange(x, "b (t pt) (h p1) (w p2) c -> b t h w (pt p1 p2 c)", pt=pt, p1=p, p2=p)


def from_patches(x, p, pt=1):
  return einops.rearrange(x, "b t h w (pt p1 p2 c) -> b (t pt) (h p1) (w p2) c", pt=pt, p1=p, p2=p)


class Patched(nn.Module):
  """Wraps `inner` (built for pt*p*p*C input and output channels); same call signature as the inner model."""
  inner: Any
  patch_size: int
  temporal_patch_size: int = 1

  @nn.compact
  def __call__(self, x, time, cond=None, **kwargs):
    p, pt = self.patch_size, self.temporal_patch_size
    if x.shape[2] % p or x.shape[3] % p:
      raise ValueError(f"frame size {x.shape[2:4]} is not divisible by patch_size={p}")
    if x.shape[1] % pt:
      raise ValueError(f"{x.shape[1]} frames are not divisible by temporal_patch_size={pt}")
    if pt > 1 and (getattr(time, "ndim", 1) > 1 or kwargs.get("frame_groups") is not None
                   or getattr(cond, "ndim", 2) > 2):
      raise ValueError(f"temporal_patch_size={pt} folds frames together: per-frame timesteps, conditions and "
                       "frame groups (per-frame noise, joint image training) need temporal_patch_size=1")
    return from_patches(self.inner(to_patches(x, p, pt), time, cond, **kwargs), p, pt)
