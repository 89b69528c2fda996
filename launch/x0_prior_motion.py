"""Does a VDM workdir's x0 prediction from pure noise carry the prompt's motion?

  python launch/x0_prior_motion.py WORKDIR [--cond-scale 1] [--draws 8] [--given K --t 1.0]

At t = T - 1 the optimal x0 prediction is the mean clip of the prompt, whose centre of mass moves along the
prompt's direction (a clip moving right starts on the left; the data keeps objects inside the frame). For
each translation prompt of the evaluation set this averages the model's x0 predictions over noise draws and
prints how far their centre of mass moves along the prompt's direction, next to the same for real clips.

--given K (models trained with diffusion.frame_noise_prob > 0): the first K frames of real clips enter the
model clean at timestep 0 and the others at noise level --t (a fraction of T); the script then prints how
far each x0 prediction's centre moves from frame K-1 to the last frame along the prompt's direction (mean
over clips), next to the real clips' own: does the model continue a motion it sees?
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.data import moving_shapes
from vidgen_jax.diffusion import gaussian, guidance
from vidgen_jax.eval import run_eval
from vidgen_jax.sample import generate
from vidgen_jax.train import vdm


def centre_path(clip):
  """(T, H, W, 3) in [-1, 1] -> (T, 2) centre (x, y) of the brightness above the clip's median."""
  m = np.maximum(((clip + 1) / 2).sum(-1) - np.median(((clip + 1) / 2).sum(-1)), 0)
  ys, xs = np.mgrid[:m.shape[1], :m.shape[2]]
  total = np.maximum(m.sum((1, 2)), 1e-9)
  return np.stack([(m * xs).sum((1, 2)) / total, (m * ys).sum((1, 2)) / total], -1)


def direction(prompt):
  d = np.asarray(moving_shapes.TRANSLATIONS[moving_shapes.MOTIONS[moving_shapes.parse_caption(prompt)[2]]], float)
  return d / np.linalg.norm(d)


def report_continuation(x0, real, prompts, args):
  """Mean displacement of each clip's centre from frame given-1 to the last frame, along the prompt."""
  def along(clip, prompt):
    path = centre_path(np.clip(clip, -1, 1))
    return (path[-1] - path[args.given - 1]) @ direction(prompt)
  model = [along(c, q) for c, q in zip(x0, prompts)]
  truth = [along(c, q) for c, q in zip(real, prompts)]
  print(f"{len(prompts)} clips, {args.given} given frames, the rest at t/T {args.t}, cond_scale "
        f"{args.cond_scale}: the x0 prediction's centre moves {np.mean(model):.2f} px along the prompt from "
        f"frame {args.given - 1} to the last (real clips {np.mean(truth):.2f} px); > 2 px in "
        f"{np.mean(np.asarray(model) > 2):.0%} of the clips")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir")
  p.add_argument("--cond-scale", type=float, default=1.0)
  p.add_argument("--draws", type=int, default=8)
  p.add_argument("--seed", type=int, default=1)
  p.add_argument("--given", type=int, default=0, help="real first frames handed over clean (timestep 0)")
  p.add_argument("--t", type=float, default=1.0, help="noise level of the other frames, as a fraction of T")
  args = p.parse_args()
  gen = generate.Generator.from_workdir(args.workdir)
  run, params, sched = gen.run, gen.params, gen.run.sched
  prompts = [q for q, _ in run_eval.eval_prompts()
             if moving_shapes.MOTIONS[moving_shapes.parse_caption(q)[2]] in moving_shapes.TRANSLATIONS]
  rep = [q for q in prompts for _ in range(args.draws)]
  tok, mask = map(jnp.asarray, run.text_encoder.encode(rep))
  cond = vdm.pooled({"text_tokens": tok, "text_mask": mask})
  real = np.asarray(vdm.to_model_space(jnp.asarray(run_eval.real_videos(rep, args.seed))))

  def apply_fn(x, t, null, cond, tokens, mask):
    return run.model.apply(params, x, t, cond, null_cond=null, **vdm.text_inputs(run.model, tokens, mask))

  guided = guidance.make_guided_fn(apply_fn, args.cond_scale)
  level = int(round(args.t * (sched.num_timesteps - 1)))
  noise = jax.random.normal(jax.random.key(args.seed), real.shape)
  if args.given:
    if not 0 < args.given < real.shape[1] or not gen.config.diffusion.get("frame_noise_prob", 0.0):
      raise SystemExit(f"--given needs 0 < K < {real.shape[1]} and a model trained with "
                       "diffusion.frame_noise_prob > 0")
    t = jnp.where(jnp.arange(real.shape[1]) < args.given, 0, level) * jnp.ones((len(rep), 1), jnp.int32)
    x_t = jnp.where((jnp.arange(real.shape[1]) < args.given)[None, :, None, None, None], real,
                    gaussian.q_sample(sched, real, t, noise))
  else:
    t = jnp.full((len(rep),), level, jnp.int32)
    x_t = gaussian.q_sample(sched, real, t, noise)
  with run.context():
    x0 = jax.jit(lambda x: gaussian.model_output_to_x0_eps(
        sched, x, t, guided(x, t, cond, tok, mask), gen.config.diffusion.prediction)[0])(x_t)
  x0 = np.asarray(x0)
  if args.given:
    report_continuation(x0, real, rep, args)
    return
  x0 = x0.reshape(len(prompts), args.draws, *real.shape[1:])
  real = real.reshape(x0.shape)
  along, along_real, right = [], [], 0
  for i, prompt in enumerate(prompts):
    d = direction(prompt)
    path, real_path = centre_path(x0[i].mean(0)), centre_path(real[i].mean(0))
    shift = path[-1] - path[0]
    along.append(shift @ d)
    along_real.append((real_path[-1] - real_path[0]) @ d)
    right += (shift @ d) / (np.linalg.norm(shift) + 1e-9) > 0.7
  print(f"{len(prompts)} translation prompts, cond_scale {args.cond_scale}: the x0 prediction's centre moves "
        f"{np.mean(along):.2f} px along the prompt (real mean clips {np.mean(along_real):.2f} px); direction "
        f"right for {right} / {len(prompts)}")


if __name__ == "__main__":
  main()
