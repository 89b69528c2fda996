"""How much does the diffusion loss reward knowing each attribute of the prompt, where motion is decided?

  python launch/prior_loss_share.py [--clips 256] [--frames 8] [--size 32]

At pure noise (t = T) the x0 target is independent of the input, so the best x0 prediction given a caption is
that caption's mean clip, and its mean squared error (pixels in [-1, 1], the training loss of x0-prediction)
is what a perfectly trained model pays there. This prints that optimal loss when the predictor knows less
or more of the caption, for every combination of three colour-shape pairs with each of their motions, from
procedural clips (means from one seed, errors on another, so it is out of sample):

  nothing     the mean clip over all the listed captions (the unconditional prior)
  colour, shape  the mean over that pair's motions (the motion word ignored)
  + motion, static  the caption's mean clip averaged over frames (the motion word used for layout only)
  + motion    the caption's mean clip, frame by frame (the optimum)

The drop from "colour, shape" to "+ motion" is the whole reward for reading the motion word at t = T;
compare it with the drop that colour and shape bring.
"""
import argparse

import numpy as np

from vidgen_jax.data import moving_shapes as ms
from vidgen_jax.eval import run_eval

PAIRS = (("red", "circle"), ("green", "square"), ("blue", "triangle"))


def clips(prompt, seed, n, size, frames):
  return run_eval.real_videos([prompt] * n, seed, size, frames).astype(np.float32) / 127.5 - 1


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clips", type=int, default=256, help="clips per caption for the mean and for the error")
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=32)
  args = p.parse_args()
  captions = {pair: [f"a {pair[0]} {pair[1]} {m}" for m in ms.MOTIONS
                     if m not in ms.ROTATIONS or pair[1] in ms.ROTATING_SHAPES] for pair in PAIRS}
  every = [c for pair in PAIRS for c in captions[pair]]
  make = lambda seed: {c: clips(c, seed, args.clips, args.size, args.frames) for c in every}
  fit, test = make(1), make(2)
  mean = {c: fit[c].mean(0) for c in every}
  overall = np.mean([mean[c] for c in every], 0)
  pair_mean = {pair: np.mean([mean[c] for c in captions[pair]], 0) for pair in PAIRS}
  rows = {"nothing": [], "colour, shape": [], "+ motion, static": [], "+ motion": []}
  for pair in PAIRS:
    for c in captions[pair]:
      x = test[c]
      err = lambda pred: float(((x - pred) ** 2).mean())
      rows["nothing"].append(err(overall))
      rows["colour, shape"].append(err(pair_mean[pair]))
      rows["+ motion, static"].append(err(np.broadcast_to(mean[c].mean(0, keepdims=True), mean[c].shape)))
      rows["+ motion"].append(err(mean[c]))
  loss = {name: float(np.mean(v)) for name, v in rows.items()}
  base, known = loss["nothing"], loss["colour, shape"]
  print(f"optimal x0 MSE at t = T, {len(every)} captions x {args.clips} clips ({args.frames} x {args.size} px):")
  for name, value in loss.items():
    print(f"  {name:18s} {value:.5f}  ({(base - value) / base:6.1%} below 'nothing')")
  gain = known - loss["+ motion"]
  print(f"the motion word is worth {gain:.5f} ({gain / known:.1%} of the loss left once colour and shape are "
        f"known); colour and shape together {base - known:.5f}")

if __name__ == "__main__":
  main()
