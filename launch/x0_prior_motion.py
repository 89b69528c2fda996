"""Does a VDM workdir's x0 prediction from pure noise carry the prompt's motion?

  python launch/x0_prior_motion.py WORKDIR [--cond-scale 1] [--draws 8]

At t = T - 1 the optimal x0 prediction is the mean clip of the prompt, whose centre of mass moves along the
prompt's direction (a clip moving right starts on the left; the data keeps objects inside the frame). For
each translation prompt of the evaluation set this averages the model's x0 predictions over noise draws and
prints how far their centre of mass moves along the prompt's direction, next to the same for real clips.
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


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir")
  p.add_argument("--cond-scale", type=float, default=1.0)
  p.add_argument("--draws", type=int, default=8)
  p.add_argument("--seed", type=int, default=1)
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
  t = jnp.full((len(rep),), sched.num_timesteps - 1, jnp.int32)
  with run.context():
    x0 = jax.jit(lambda x: gaussian.model_output_to_x0_eps(
        sched, x, t, guided(x, t, cond, tok, mask), gen.config.diffusion.prediction)[0])(
            jax.random.normal(jax.random.key(args.seed), real.shape))
  x0 = np.asarray(x0).reshape(len(prompts), args.draws, *real.shape[1:])
  real = real.reshape(x0.shape)
  along, along_real, right = [], [], 0
  for i, prompt in enumerate(prompts):
    d = np.asarray(moving_shapes.TRANSLATIONS[moving_shapes.MOTIONS[moving_shapes.parse_caption(prompt)[2]]], float)
    d /= np.linalg.norm(d)
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
