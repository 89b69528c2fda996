"""Scores for conditional generation: long videos by extension or as back-and-forth stories, and video
prediction from given frames.

Extension (`score_extension`): each long video is cut into consecutive 8-frame segments that the evaluator
reads one by one. Reported per segment index: colour / shape / motion / joint accuracy against the prompt;
over videos: the fraction whose every segment keeps the prompt's colour and motion ('all_segments'); at
every boundary between segments: 'boundary_consistency' (both sides read as the same colour, shape and
motion: the object kept and its motion continued) and 'boundary_jump' (mean absolute pixel change across
the boundary divided by the mean change between consecutive frames inside segments: 1 means the cut is as
smooth as the video elsewhere, larger means a visible jump) and 'boundary_object_kept' (both sides read as
the same colour and shape). Where segments ask for a rotation, 'rotation_turn_per_segment' gives their mean
turn in degrees per frame the way the segment's prompt says (`metrics.rotation_turn`; None for a segment
index with no rotating prompt): the evaluator reads a slow turn as static, this says how slow.

The data set cannot continue most motions for 32 frames: a translation covers 25-50% of the frame per
8-frame clip and growing/shrinking scale by 1.5-2, so the real continuation (`run_eval.continued_real_videos`,
reported as 'ceiling_real') leaves the frame or vanishes. The 'story' task therefore alternates the prompt
with its opposite motion segment by segment (`run_eval.story_prompts`: right, left, right, ...), which the
data set's physics does allow (its ceiling: the same clips played back and forth).

Super-resolution: the same accuracies plus PSNR against the real clips (`psnr`).

Prediction (`score_prediction`): real clips rendered for each prompt give their first frames to the model;
the evaluator reads the completed clip (given frames included, as the clip a user gets) and the motion
accuracy says whether the model continued the given motion. Rotations also report their turn per frame
(`by_motion`, given frames included).
"""
import numpy as np

from vidgen_jax.eval import evaluator as ev
from vidgen_jax.eval import metrics


def _mean_abs_diff(a, b):
  return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=tuple(range(1, a.ndim)))


def boundary_jump(videos, length: int = ev.NUM_FRAMES) -> float:
  """Mean |frame(k·length) − frame(k·length − 1)| over boundaries / mean |frame(i+1) − frame(i)| within
  segments, for uint8 videos (N, T, H, W, 3)."""
  videos = np.asarray(videos)
  t = videos.shape[1]
  cuts = [k * length for k in range(1, t // length)]
  if not cuts:
    raise ValueError(f"videos of {t} frames have no boundary between {length}-frame segments")
  inside = [i for i in range(t - 1) if (i + 1) % length]
  across = np.mean([_mean_abs_diff(videos[:, c], videos[:, c - 1]) for c in cuts])
  within = np.mean([_mean_abs_diff(videos[:, i + 1], videos[:, i]) for i in inside])
  return float(across / max(within, 1e-6))


def score_extension(videos, prompts, evaluator: ev.Evaluator) -> dict:
  """Segment-by-segment scores of long uint8 videos (N, T, H, W, 3) made for `prompts` (module docstring):
  one prompt per video, or one list of per-segment prompts per video (a story)."""
  videos = np.asarray(videos)
  segs = [ev.segments(v) for v in videos]
  n_seg = len(segs[0])
  flat = np.stack([s for v in segs for s in v])
  readings = evaluator.read(flat)
  stories = [[p] * n_seg if isinstance(p, str) else list(p) for p in prompts]
  if any(len(s) != n_seg for s in stories):
    raise ValueError(f"a story needs one prompt per {ev.NUM_FRAMES}-frame segment ({n_seg})")
  right = metrics.correctness(readings, [p for s in stories for p in s]).reshape(len(videos), n_seg, 3)
  per_segment = [metrics.accuracy(right[:, k]) for k in range(n_seg)]
  colour, motion = ev.ATTRIBUTES.index("colour"), ev.ATTRIBUTES.index("motion")
  out = {
      "num_videos": len(videos), "num_frames": int(videos.shape[1]), "per_segment": per_segment,
      "all_segments": float((right[..., colour] & right[..., motion]).all(axis=1).mean()),
      "segment_colour_and_motion": float((right[..., colour] & right[..., motion]).mean()),
  }
  turns = metrics.rotation_turn(flat, [p for s in stories for p in s]).reshape(len(videos), n_seg)
  if not np.isnan(turns).all():   # rotating segments: degrees per frame turned the segment prompt's way
    out["rotation_turn_per_segment"] = [float(np.nanmean(t)) if not np.isnan(t).all() else None
                                        for t in turns.T]
  if n_seg > 1:
    rows = np.array(readings, dtype=object).reshape(len(videos), n_seg)
    kept = lambda attrs: float(np.mean([[all(rows[i, k][a] == rows[i, k + 1][a] for a in attrs)
                                         for k in range(n_seg - 1)] for i in range(len(videos))]))
    out["boundary_object_kept"] = kept(("colour", "shape"))
    if all(len(set(s)) == 1 for s in stories):   # one prompt: the motion too must carry on across the cut
      out["boundary_consistency"] = kept(ev.ATTRIBUTES)
    out["boundary_jump"] = boundary_jump(videos)
  return out


def psnr(a, b) -> float:
  """Mean over videos of the PSNR (dB) between uint8 videos a and b (N, T, H, W, 3)."""
  mse = np.mean(np.square(a.astype(np.float64) - b.astype(np.float64)), axis=tuple(range(1, a.ndim)))
  return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def score_prediction(videos, prompts, evaluator: ev.Evaluator) -> dict:
  """Accuracy of completed clips (N, 8, H, W, 3) against the prompts whose real clips gave the frames, overall
  and by the prompt's motion."""
  videos = np.asarray(videos)
  right = metrics.correctness(evaluator.read(videos), list(prompts))
  turns = metrics.rotation_turn(videos, list(prompts))
  return {**metrics.accuracy(right), "by_motion": metrics.by_motion(right, list(prompts), turns)}


def _split_masks(splits) -> dict:
  return {split: (splits == split if split != "all" else np.ones(len(splits), bool))
          for split in ("all", "seen", "heldout")}


TASKS = ("extension", "story", "prediction", "superres")


def evaluate_workdir(workdir, task: str, *, num_samples: int = 1, seed: int = 0, step=None, num_frames: int = 32,
                     given: int = 2, factor: int = 2, method: str = "reconstruction", guidance_weight=None,
                     overlap=None, gen=None, fps: int = 8, experts=None, **sampling) -> dict:
  """Runs `task` on the eval prompt set and writes WORKDIR/eval/step_N_<task>_<method>[_<split's
  tag>][_<sampling settings given>][_overlap<k>][_seed<S>]/{metrics.json, samples.npz, grid.gif}; returns the
  metrics (scores per split: seen, heldout, all).

  superres: real clips average-pooled by `factor` are super-resolved (reconstruction guidance); scored by
  the evaluator and by PSNR against the real clips, next to nearest-neighbour upsampling. experts (as in
  `run_eval.evaluate_workdir`) samples with an expert split, written to ..._<method>_<its tag>
  (`generate.Generator.tag`)."""
  import json
  import time

  from vidgen_jax.eval import run_eval
  from vidgen_jax.io import video as video_io
  from vidgen_jax.sample import generate
  if task not in TASKS:
    raise ValueError(f"task {task!r} unknown; choose one of {TASKS}")
  if num_samples < 1:
    raise ValueError("--num-samples must be at least 1")
  gen = gen or generate.load_generator(workdir, step=step, **(experts or {}))
  pairs = run_eval.eval_prompts()
  prompts = [p for p, _ in pairs for _ in range(num_samples)]
  splits = np.array([s for _, s in pairs for _ in range(num_samples)])
  common = dict(seed=seed, method=method, guidance_weight=guidance_weight, overlap=overlap, **sampling)
  t0 = time.time()
  segments = num_frames // ev.NUM_FRAMES
  if task in ("extension", "story"):
    if num_frames % ev.NUM_FRAMES or segments < 2:
      raise ValueError(f"--num-frames {num_frames}: {task} is scored in {ev.NUM_FRAMES}-frame segments; give a "
                       f"multiple of {ev.NUM_FRAMES}, at least {2 * ev.NUM_FRAMES}")
  if task == "extension":
    videos = gen.generate_long([[p] for p in prompts], num_frames=num_frames, **common)
    score = score_extension
  elif task == "story":   # back and forth: the prompt's motion, its opposite, the prompt's, ...
    stories = [run_eval.story_prompts(p, segments) for p in prompts]
    videos = gen.generate_long(stories, segment_frames=ev.NUM_FRAMES, **common)
    score = lambda v, p, e: score_extension(v, [run_eval.story_prompts(q, segments) for q in p], e)
  elif task == "prediction":
    real = run_eval.real_videos(prompts, seed, gen.config.data.image_size, gen.config.data.num_frames)
    videos = gen.generate_long([[p] for p in prompts], given=real[:, :given], **common)
    score = score_prediction
  else:   # superres: real clips average-pooled by `factor`, then super-resolved
    real = run_eval.real_videos(prompts, seed, gen.config.data.image_size, gen.config.data.num_frames)
    n, t, h, w, c = real.shape
    low = real.reshape(n, t, h // factor, factor, w // factor, factor, c).mean((3, 5)).round().astype(np.uint8)
    videos = gen.upsample(low, prompts, seed=seed, guidance_weight=guidance_weight, **sampling)
    score = score_prediction
  seconds = time.time() - t0
  evaluator = ev.default_evaluator()
  scores = {}
  for split, keep in _split_masks(splits).items():
    scores[split] = score(videos[keep], [p for p, k in zip(prompts, keep) if k], evaluator)
    if task == "superres":   # against the real clips, next to nearest-neighbour upsampling of the input
      nearest = np.repeat(np.repeat(low[keep], factor, axis=2), factor, axis=3)
      scores[split].update(psnr=psnr(videos[keep], real[keep]), psnr_nearest=psnr(nearest, real[keep]))
  result = {"task": task, "step": gen.step, "seed": seed, "method": method,
            "guidance_weight": gen._weight(guidance_weight), "samples_per_prompt": num_samples,
            "num_frames": int(videos.shape[1]), "given": given if task == "prediction" else 0,
            "sampling": {k: v for k, v in sampling.items() if v is not None},
            "sample_seconds": round(seconds, 2), "scores": scores,
            **({"experts": gen.experts} if gen.experts else {})}
  if task in ("extension", "story"):   # the data set's own continuation of the same clips, scored the same way
    ceiling = run_eval.continued_real_videos(prompts, seed, num_frames, gen.config.data.image_size,
                                             ev.NUM_FRAMES, back_and_forth=task == "story")
    result["ceiling_real"] = {split: score(ceiling[keep], [p for p, k in zip(prompts, keep) if k], evaluator)
                              for split, keep in _split_masks(splits).items()}
  if task == "prediction":
    frozen = np.repeat(run_eval.real_videos(prompts, seed, gen.config.data.image_size,
                                            gen.config.data.num_frames)[:, :1], videos.shape[1], axis=1)
    result["floor_frozen"] = score_prediction(frozen, prompts, evaluator)
  tag = "reconstruction" if task == "superres" else method
  if tag == "reconstruction":
    tag += f"_w{gen._weight(guidance_weight):g}"
  out = run_eval.eval_dir(workdir, seed, f"step_{gen.step}_{task}_{tag}", gen.tag, run_eval.sampling_tag(sampling),
                         "" if overlap is None else f"overlap{overlap}")
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(result, indent=1))
  video_io.write_videos(out / "samples.npz", videos, prompts)
  video_io.write_videos(out / "grid.gif", videos, prompts, fps=fps, ncols=8, scale=2)
  result["dir"] = str(out)
  return result
