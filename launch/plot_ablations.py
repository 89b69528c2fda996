"""Bar charts of the video-diffusion ablations on moving shapes (docs/ablations.md) from eval metrics files.

  python launch/plot_ablations.py --out docs/ablation_joint.png \
      --run "K=0=WD0/eval/step_2000/metrics.json" --run "K=4=WD4/eval/step_2000/metrics.json" ...

Each --run is LABEL=PATH to a metrics.json written by `vidgen eval` (generation: accuracy per split) or
`vidgen eval --task prediction|superres` (accuracy per split) or `--task extension` (its per-video scores).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_KEYS = {"generation": ("colour", "shape", "motion", "joint"),
         "prediction": ("colour", "shape", "motion", "joint"),
         "superres": ("colour", "shape", "motion", "joint"),
         "extension": ("all_segments", "segment_colour_and_motion", "boundary_consistency")}


def scores(path):
  m = json.loads(open(path).read())
  task = m.get("task", "generation")
  s = m["scores"]["generated"] if task == "generation" else m["scores"]
  return task, {split: {k: s[split][k] for k in _KEYS[task]} for split in ("seen", "heldout")}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", action="append", required=True, metavar="LABEL=PATH")
  p.add_argument("--out", required=True)
  p.add_argument("--title", default="")
  args = p.parse_args()
  runs = [r.split("=", 1) if r.count("=") == 1 else r.rsplit("=", 1) for r in args.run]
  loaded = [(label, *scores(path)) for label, path in runs]
  tasks = {t for _, t, _ in loaded}
  if len(tasks) != 1:
    raise ValueError(f"mixing tasks {tasks} in one plot")
  keys = _KEYS[tasks.pop()]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
  width = 0.8 / len(loaded)
  for ax, split in zip(axes, ("seen", "heldout")):
    for i, (label, _, s) in enumerate(loaded):
      ax.bar(np.arange(len(keys)) + i * width, [100 * s[split][k] for k in keys], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + width * (len(loaded) - 1) / 2)
    ax.set_xticklabels([k.replace("_", " ") for k in keys], fontsize=8)
    ax.set_title(f"{args.title} ({split})" if args.title else split)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("%")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
