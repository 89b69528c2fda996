"""`vidgen eval`: sample a fixed prompt set (seen and held-out combinations) and score it with the evaluator.

Writes WORKDIR/eval/step_<N>[_<tag>][_seed<S>]/{metrics.json, grid.png, samples.npz, grid.gif} (the tag names an
expert split and the sampling settings given, `evaluate_workdir`) and logs the metrics to
the workdir's TensorBoard under eval/. Reproducible from the seed. Every number comes with its ceiling and
floors, computed on the same prompts at the same set size:
  real      procedurally rendered clips of the prompts (what a perfect generator would score)
  noise     uniform random pixels
  frozen    the real clips' first frame repeated
  reversed  the real clips played backwards (right colour and shape, opposite motion)
The Fréchet evaluator distance (FED) of every set is measured against a separate, larger real set of the same
prompts (REFERENCE_PER_PROMPT clips each).
"""
import json
import pathlib
import time

import numpy as np

from vidgen_jax.data import moving_shapes
from vidgen_jax.eval import evaluator as ev
from vidgen_jax.eval import grid as grid_lib
from vidgen_jax.eval import metrics as metrics_lib
from vidgen_jax.io import video as video_io

NUM_SEEN_PROMPTS = 24
REFERENCE_PER_PROMPT = 8
_REAL_SEED_OFFSET = 1_000_003  # real clips never share geometry with anything seeded by the user's seed


def eval_prompts() -> list[tuple[str, str]]:
  """(caption, 'seen' | 'heldout'): every held-out combination and a fixed, evenly spread set of seen ones."""
  seen = moving_shapes.captions("train")
  stride = max(1, len(seen) // NUM_SEEN_PROMPTS)
  chosen = seen[::stride][:NUM_SEEN_PROMPTS]
  return [(p, "seen") for p in chosen] + [(p, "heldout") for p in moving_shapes.captions("heldout")]


def real_videos(prompts, seed: int, image_size: int = 32, num_frames: int = 8) -> np.ndarray:
  """One procedurally rendered clip per prompt; clip i is a pure function of (seed, i, prompt)."""
  out = []
  for i, p in enumerate(prompts):
    combo = moving_shapes.parse_caption(p)
    rng = np.random.default_rng([_REAL_SEED_OFFSET, seed, i])
    out.append(moving_shapes.render(moving_shapes.sample_params(rng, combo, image_size, num_frames),
                                    image_size, num_frames))
  return np.stack(out)


def continued_real_videos(prompts, seed: int, num_frames: int, image_size: int = 32, clip_frames: int = 8,
                          back_and_forth: bool = False) -> np.ndarray:
  """The geometry of `real_videos(prompts, seed, image_size, clip_frames)` carried on to `num_frames` frames,
  as the data set's physics gives it: the ceiling of long-video tasks.

  Default: every clip continued at its own per-frame rates (position, size and angle extrapolated linearly;
  the first `clip_frames` frames are the real clip). Objects leave the frame or vanish (black frames) when
  the motion runs on: a translation covers 25-50% of the frame per clip. `back_and_forth=True`: the
  trajectory runs forward over the first `clip_frames`-frame segment, back over the next, and so on (1/clip_frames
  of it per frame, so each segment covers (clip_frames - 1)/clip_frames of the real clip's motion): the
  object stays in the frame, and segment k shows the prompt's motion for even k and its opposite for odd k
  (`story_prompts`).
  """
  frames = np.arange(num_frames)
  if back_and_forth:
    u = (frames / clip_frames) % 2.0
    progress = np.where(u <= 1.0, u, 2.0 - u)
  else:
    progress = frames / max(clip_frames - 1, 1)
  out = []
  for i, p in enumerate(prompts):
    combo = moving_shapes.parse_caption(p)
    rng = np.random.default_rng([_REAL_SEED_OFFSET, seed, i])
    params = moving_shapes.sample_params(rng, combo, image_size, clip_frames)
    out.append(moving_shapes.render(params, image_size, num_frames, progress))
  return np.stack(out)


def story_prompts(prompt: str, num_segments: int) -> list[str]:
  """[prompt, the same object with the opposite motion, prompt, ...]: a story whose every segment the
  object can act out without leaving the frame (`continued_real_videos(back_and_forth=True)`)."""
  c, s, m = moving_shapes.parse_caption(prompt)
  back = moving_shapes.caption(c, s, moving_shapes.opposite_motion(moving_shapes.MOTIONS[m]))
  return [prompt if k % 2 == 0 else back for k in range(num_segments)]


def baselines(prompts, seed: int, image_size: int = 32, num_frames: int = 8) -> dict:
  """The ceiling and floor sets for `prompts` (see the module docstring)."""
  real = real_videos(prompts, seed, image_size, num_frames)
  noise = np.random.default_rng([_REAL_SEED_OFFSET + 1, seed]).integers(0, 256, real.shape, dtype=np.uint8)
  return {"real": real, "noise": noise, "frozen": np.repeat(real[:, :1], real.shape[1], axis=1),
          "reversed": real[:, ::-1].copy()}


def _clips(videos, prompts, splits):
  """Scores long videos segment by segment: every 8-frame segment becomes one scored clip."""
  videos = np.asarray(videos)
  if videos.shape[1] == ev.NUM_FRAMES:
    return videos, list(prompts), list(splits)
  clips, ps, ss = [], [], []
  for v, p, s in zip(videos, prompts, splits):
    for seg in ev.segments(v):
      clips.append(seg), ps.append(p), ss.append(s)
  return np.stack(clips), ps, ss


def evaluate_videos(videos, prompts, splits, seed: int = 0, evaluator: ev.Evaluator | None = None,
                    with_baselines: bool = True) -> tuple[dict, list[dict]]:
  """(metrics, per-video readings) for uint8 videos with their prompts and split names."""
  evaluator = evaluator or ev.default_evaluator()
  clips, prompts, splits = _clips(videos, prompts, splits)
  size = clips.shape[2]
  unique = list(dict.fromkeys(prompts))
  ref_prompts = [p for p in unique for _ in range(REFERENCE_PER_PROMPT)]
  ref_split = {p: s for p, s in zip(prompts, splits)}
  ref_feats = evaluator.features(real_videos(ref_prompts, seed + 1, size, ev.NUM_FRAMES))
  ref_splits = np.array([ref_split[p] for p in ref_prompts])
  reference = {s: ref_feats[ref_splits == s] for s in set(splits)}
  reference["all"] = ref_feats

  def score(v):
    feats, probs = evaluator.run(v)
    readings = ev.readings_from(probs)
    turns = metrics_lib.rotation_turn(v, prompts)
    return metrics_lib.by_split(feats, readings, prompts, splits, reference, turns), readings

  result, readings = score(clips)
  out = {"generated": result}
  if with_baselines:
    for name, v in baselines(prompts, seed, size, ev.NUM_FRAMES).items():
      out[name] = score(v)[0]
  return out, readings


def evaluate_workdir(workdir, num_samples=None, seed=0, step=None, fps=8, tag: str = "", gen=None,
                     experts=None, **sampling) -> dict:
  """Samples and scores the eval prompt set; `gen` reuses an already loaded generator of this workdir.

  experts: {"low_noise_workdir", "low_noise_step", "switch"} (`generate.load_generator`) samples with an
  expert split. Results go to eval/step_<N>[_<the split's tag>][_<sampling settings given>][_<tag>][_seed<S>]
  (`generate.Generator.tag`, `sampling_tag`), so evaluations with other settings never overwrite each other."""
  from vidgen_jax.sample import generate
  gen = gen or generate.load_generator(workdir, step=step, **(experts or {}))
  tag = "_".join(filter(None, (gen.tag, sampling_tag(sampling), tag)))
  n = num_samples or gen.config.eval.num_samples
  if n < 1:
    raise ValueError("--num-samples must be at least 1")
  pairs = eval_prompts()
  prompts = [p for p, _ in pairs for _ in range(n)]
  splits = [s for _, s in pairs for _ in range(n)]
  sampling = {k: v for k, v in sampling.items() if v is not None}
  t0 = time.time()
  videos = gen.generate(prompts, seed=seed, **sampling)
  seconds = time.time() - t0
  evaluator = ev.default_evaluator()
  scores, readings = evaluate_videos(videos, prompts, splits, seed=seed, evaluator=evaluator)
  metrics = {
      "step": gen.step, "seed": seed, "samples_per_prompt": n,
      "sampling": {k: v for k, v in sampling.items() if v is not None}, "sample_seconds": round(seconds, 2),
      "scores": scores, **({"experts": gen.experts} if gen.experts else {}),
      "evaluator": {"file": str(ev.ASSET.name), "accuracy": evaluator.meta.get("accuracy")},
  }
  out = eval_dir(workdir, seed, f"step_{gen.step}", tag)
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
  (out / "readings.json").write_text(json.dumps(
      [{"prompt": p, "split": s, **r} for p, s, r in zip(prompts, splits, readings)], indent=1))
  if ev.NUM_FRAMES <= videos.shape[1] < 2 * ev.NUM_FRAMES:   # one scored segment (Phenaki clips: 9 frames)
    grid_lib.labelled_grid(videos[:, :ev.NUM_FRAMES], prompts, readings, splits).save(out / "grid.png")
  video_io.write_videos(out / "samples.npz", videos, prompts)
  video_io.write_videos(out / "grid.gif", videos, prompts, fps=fps, ncols=max(n, 8), scale=2)
  _log_tensorboard(workdir, gen.step, scores["generated"], tag)
  metrics["dir"] = str(out)
  return metrics


def sampling_tag(sampling: dict) -> str:
  """The sampling settings given (None = the workdir's default) as a directory-name part, sorted by name:
  {'steps': 25, 'cond_scale': 5.0} -> 'cond_scale5_steps25'; '' when none is given."""
  return "_".join(f"{k}{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}{v}"
                  for k, v in sorted(sampling.items()) if v is not None)


def eval_dir(workdir, seed: int, *parts: str) -> pathlib.Path:
  """WORKDIR/eval/<the non-empty parts joined by _>, with seed<seed> added for a seed other than 0, so that
  evaluating the same step with another seed adds a directory instead of overwriting the first one's."""
  return pathlib.Path(workdir) / "eval" / "_".join(filter(None, (*parts, f"seed{seed}" if seed else "")))


def _log_tensorboard(workdir, step, scores, tag):
  from vidgen_jax.train import progress
  writer = progress.MetricWriter(workdir, jsonl_name="eval_metrics.jsonl")
  flat = {f"{split}/{k}": v for split, d in scores.items() for k, v in d.items()
          if isinstance(v, (int, float)) and k != "num"}
  writer.scalars(step, flat, prefix="eval" + (f"_{tag}" if tag else ""))
  writer.close()


def headline(metrics: dict) -> str:
  """One line per set: colour/shape/motion/joint on seen and held-out prompts, and FED."""
  lines = []
  for name, d in metrics["scores"].items():
    parts = [f"{split} c{d[split]['colour']:.0%} s{d[split]['shape']:.0%} m{d[split]['motion']:.0%} "
             f"j{d[split]['joint']:.0%} FED {d[split]['fed']:.1f}" for split in ("seen", "heldout") if split in d]
    lines.append(f"{name:9s} " + " | ".join(parts))
  generated = metrics["scores"].get("generated", {}).get("all", {})
  if "by_motion" in generated:
    lines.append("generated motion by prompt motion: " + metrics_lib.motion_line(generated["by_motion"]))
  turns = {name: {m: d["turn"] for m, d in scores.get("all", {}).get("by_motion", {}).items() if "turn" in d}
           for name, scores in metrics["scores"].items()}
  if any(turns.values()):
    lines.append("rotations turn (deg/frame, the prompt's way): " + " | ".join(
        f"{name} " + ", ".join(f"{m.split()[-1]} {t:+.1f}" for m, t in ts.items())
        for name, ts in turns.items() if ts))
  return "\n".join(lines)


SWEEPABLE = {"cond_scale": float, "steps": int, "frame_offset": int, "switch": float}


def sweep(workdir, name: str, values, num_samples=None, seed: int = 0, step=None, experts=None,
          **sampling) -> dict:
  """Evaluates the workdir once per value of one sampling setting; writes eval/sweep_<name>.{json,png}.

  experts (as in `evaluate_workdir`) sweeps an expert split; name 'switch' sweeps its noise level t/T
  (0: the high-noise workdir alone, 1: the low-noise one alone) and needs experts."""
  if name not in SWEEPABLE:
    raise ValueError(f"cannot sweep {name!r}; choose one of {sorted(SWEEPABLE)}")
  if name == "switch" and not (experts and experts.get("low_noise_workdir")):
    raise ValueError("sweeping the expert switch needs a low-noise workdir (--low-noise-workdir)")
  values = [SWEEPABLE[name](v) for v in values]
  if not values:
    raise ValueError("a sweep needs at least one value")
  from vidgen_jax.sample import generate
  experts = dict(experts or {})
  if name == "switch":   # both models restored once; each value pairs them anew
    high, low = generate.load_experts(workdir, step, experts["low_noise_workdir"], experts.get("low_noise_step"))
    gens = [high.with_low_noise_expert(low, v, workdir=experts["low_noise_workdir"],
                                       cond_scale=experts.get("low_noise_cond_scale")) for v in values]
  else:
    gens = [generate.load_generator(workdir, step=step, **experts)] * len(values)   # restored once
  rows = []
  for v, gen in zip(values, gens):   # a switch value is the generator's own (its tag names the directory)
    setting = {} if name == "switch" else {name: v}
    m = evaluate_workdir(workdir, num_samples=num_samples, seed=seed, gen=gen, **{**sampling, **setting})
    rows.append({name: v, "sample_seconds": m["sample_seconds"],
                 **{f"{set_}/{split}": m["scores"][set_][split] for set_ in ("generated", "real")
                    for split in ("seen", "heldout")}})
  result = {"workdir": str(workdir), "step": m["step"], "sweep": name, "seed": seed,
            "samples_per_prompt": m["samples_per_prompt"], "rows": rows,
            **({"experts": {k: v for k, v in gens[0].experts.items() if name != k}} if gens[0].experts else {})}
  files = sweep_files(workdir, name, gens[0].tag)
  files[0].write_text(json.dumps(result, indent=1))
  plot_sweep(result, files[1])
  result["files"] = [str(f) for f in files]
  return result


def sweep_files(workdir, name: str, tag: str = ""):
  """(json, png) paths of a sweep: eval/sweep_<name>, or eval/sweep_<tag>_<name> for a generator with a tag
  (an expert split, beside the single model's own sweep); a switch sweep is the split's own and untagged."""
  prefix = f"{tag}_" if tag and name != "switch" else ""
  base = pathlib.Path(workdir) / "eval"
  return [base / f"sweep_{prefix}{name}{ext}" for ext in (".json", ".png")]   # the tag may hold a dot


def plot_sweep(result: dict, path):
  """Joint accuracy and FED (seen and held-out prompts) against the swept value; real clips dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  name, rows = result["sweep"], result["rows"]
  x = [r[name] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for ax, metric, label in ((axes[0], "joint", "joint accuracy"), (axes[1], "fed", "Fréchet evaluator distance")):
    for split, colour in (("seen", "tab:blue"), ("heldout", "tab:orange")):
      ax.plot(x, [r[f"generated/{split}"][metric] for r in rows], "o-", color=colour, label=f"generated, {split}")
      ax.axhline(rows[0][f"real/{split}"][metric], color=colour, ls="--", lw=1, label=f"real clips, {split}")
    ax.set_xlabel(name)
    ax.set_ylabel(label)
    if name == "steps":
      ax.set_xscale("log")
  axes[0].set_ylim(-0.02, 1.02)
  axes[0].legend(fontsize=7)
  fig.suptitle(f"{pathlib.Path(result['workdir']).name} step {result['step']}, "
               f"{result['samples_per_prompt']} samples/prompt, seed {result['seed']}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
