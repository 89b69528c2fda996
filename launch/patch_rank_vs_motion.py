"""Can a model that writes each p x p patch through k channels still draw a motion?

  python launch/patch_rank_vs_motion.py [--patch 4] [--rank 48 --rank 32 ...] [--motion "rotating clockwise" ...]

A U-Net on space-to-depth patches ends in a 1x1 conv from its `dim` channels to p * p * 3 values, so every
patch it outputs lies in a fixed k-dimensional affine subspace (k = dim; the demo: 32 of 48). The best such
subspace for the data is the PCA of its patches. This projects real clips onto it at each rank and reads
them with the shapes evaluator: a motion still read at rank k is not erased by that bottleneck, so a model
that fails it fails for another reason (docs/ablations.md, "Where the remaining failures are").
"""
import argparse

import numpy as np

from vidgen_jax.data import moving_shapes as ms
from vidgen_jax.eval import evaluator as ev
from vidgen_jax.models import patched


def patches(videos, p):
  """(N, T, H, W, C) -> (N * T * H/p * W/p, p * p * C): the U-Net's space-to-depth patches, one per row."""
  return patched.to_patches(videos, p).reshape(-1, p * p * videos.shape[-1])


def unpatch(rows, shape, p):
  n, t, h, w, c = shape
  return patched.from_patches(rows.reshape(n, t, h // p, w // p, p * p * c), p)


def patch_subspace(videos, p):
  """(mean patch, principal directions as rows, by decreasing variance, explained variance ratios)."""
  x = patches(videos, p).astype(np.float64)
  mean = x.mean(0)
  _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
  return mean, vt, s ** 2 / np.sum(s ** 2)


def project(videos, mean, directions, p):
  """Each patch of `videos` replaced by its nearest point of the affine subspace, as uint8 video."""
  x = patches(videos, p).astype(np.float64) - mean
  rows = x @ directions.T @ directions + mean
  return np.clip(np.round(unpatch(rows, videos.shape, p)), 0, 255).astype(np.uint8)


def _clips(motions, count, start, size, frames):
  source = ms.MovingShapes(num_examples=start + count, image_size=size, num_frames=frames, split="train",
                           motions=motions)
  examples = [source[start + i] for i in range(count)]
  return (np.stack([e["video"] for e in examples]), [ms.MOTIONS[int(e["motion"])] for e in examples])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--patch", type=int, default=4)
  p.add_argument("--rank", type=int, action="append", help="channels per patch (repeatable; default 48 40 32 24 16)")
  p.add_argument("--motion", action="append", choices=ms.MOTIONS,
                 help="motions to score (repeatable; default: the rotations)")
  p.add_argument("--count", type=int, default=200, help="clips scored per group")
  p.add_argument("--fit", type=int, default=600, help="clips of every motion the subspace is fitted on")
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--num-frames", type=int, default=8)
  args = p.parse_args()
  motions = args.motion or list(ms.ROTATIONS)
  size, frames = args.image_size, args.num_frames
  if size % args.patch:
    p.error(f"--image-size {size} is not divisible by --patch {args.patch}")
  mean, directions, ratios = patch_subspace(_clips(None, args.fit, 0, size, frames)[0], args.patch)
  groups = {"asked": _clips(",".join(motions), args.count, 50_000, size, frames),
            "every motion": _clips(None, args.count, 60_000, size, frames)}
  evaluator = ev.default_evaluator()
  print(f"patch {args.patch}: {directions.shape[1]} values per patch; motions asked: {', '.join(motions)}")
  for rank in args.rank or (48, 40, 32, 24, 16):
    rank = min(rank, directions.shape[0])
    cells = []
    for name, (videos, labels) in groups.items():
      projected = project(videos, mean, directions[:rank], args.patch)
      read = [r["motion"] for r in evaluator.read(projected)]
      accuracy = np.mean([a == b for a, b in zip(read, labels)])
      error = np.abs(projected.astype(np.float64) - videos).mean()
      cells.append(f"{name}: motion read {accuracy:.1%} (mean abs error {error:.2f} / 255)")
    print(f"rank {rank:3d} (variance kept {ratios[:rank].sum():.4f}): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
  main()
