"""`vidgen eval`: sample a fixed prompt set (seen and held-out combinations) and score the samples.

Writes WORKDIR/eval/step_<N>/{samples.npz, grid.gif, metrics.json}. The samples are reproducible from the
seed. Scores come from the analytic read-out in eval/heuristics.py (colour and translation/scale motion);
they are reported separately for seen and held-out prompt combinations.
"""
import json
import pathlib
import time

import numpy as np

from vidgen_jax.data import moving_shapes
from vidgen_jax.eval import heuristics
from vidgen_jax.io import video as video_io

NUM_SEEN_PROMPTS = 24


def eval_prompts() -> list[tuple[str, str]]:
  """(caption, 'seen' | 'heldout'): every held-out combination and a fixed, evenly spread set of seen ones."""
  seen = moving_shapes.captions("train")
  stride = max(1, len(seen) // NUM_SEEN_PROMPTS)
  chosen = seen[::stride][:NUM_SEEN_PROMPTS]
  return [(p, "seen") for p in chosen] + [(p, "heldout") for p in moving_shapes.captions("heldout")]


def evaluate_workdir(workdir, num_samples=None, seed=0, step=None, fps=8, **sampling) -> dict:
  from vidgen_jax.sample import generate
  gen = generate.Generator.from_workdir(workdir, step=step)
  n = num_samples or gen.run.config.eval.num_samples
  if n < 1:
    raise ValueError("--num-samples must be at least 1")
  pairs = eval_prompts()
  prompts = [p for p, _ in pairs for _ in range(n)]
  splits = [s for _, s in pairs for _ in range(n)]
  t0 = time.time()
  videos = gen.generate(prompts, seed=seed, **sampling)
  seconds = time.time() - t0
  rows = heuristics.score(videos, prompts)
  metrics = {
      "step": gen.step, "seed": seed, "samples_per_prompt": n, "sampling": {k: v for k, v in sampling.items()},
      "sample_seconds": round(seconds, 2),
      "seen": heuristics.summarise([r for r, s in zip(rows, splits) if s == "seen"]),
      "heldout": heuristics.summarise([r for r, s in zip(rows, splits) if s == "heldout"]),
      "scorer": "analytic read-out (eval/heuristics.py): colour, translation and scale motion",
  }
  out = pathlib.Path(workdir) / "eval" / f"step_{gen.step}"
  out.mkdir(parents=True, exist_ok=True)
  video_io.write_videos(out / "samples.npz", videos, prompts)
  video_io.write_videos(out / "grid.gif", videos, prompts, fps=fps, ncols=max(n, 8), scale=2)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  (out / "readout.json").write_text(json.dumps(rows, indent=1, default=_plain))
  metrics["dir"] = str(out)
  return metrics


def _plain(x):
  return x.item() if isinstance(x, np.generic) else str(x)
