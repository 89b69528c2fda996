"""Where along the sampling trajectory does a workdir's model decide motion?

  python launch/motion_vs_noise.py WORKDIR [--step N] [--cond-scale 3] [--motion "rotating clockwise" --motion ...]
                                   [--low-noise-workdir DIR2 [--switch 0.5]]

Real clips of the eval prompts are noised to t0 = frac * T, then (a) the model's one-shot x0 prediction at t0
and (b) a guided DDIM run from t0 down to 0 (50 * frac steps) are read by the shapes evaluator. Accuracy that
holds for small frac and collapses near frac = 1 means the model keeps the motion it is given but does not
create it from the text (README, Results). With --motion, the prompts are every caption of the data set with
that motion (seen and held-out), each printed per motion: accuracy that collapses even at small frac means
the model cannot draw that motion at all, not merely that it does not choose it from pure noise. Rotations
also print their mean turn in the caption's direction (degrees per frame, `metrics.rotation_turn`), first
for the real clips themselves. With --low-noise-workdir, WORKDIR's model denoises the levels t/T >= --switch
and DIR2's the rest (an expert split, `vidgen_jax/diffusion/experts.py`), in the one-shot prediction as in
the DDIM run.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.data import moving_shapes
from vidgen_jax.diffusion import gaussian
from vidgen_jax.eval import evaluator as ev
from vidgen_jax.eval import metrics, run_eval
from vidgen_jax.sample import generate
from vidgen_jax.train import vdm

FRACTIONS = (0.3, 0.5, 0.7, 0.8, 0.9, 1.0)


def to_uint8(x):
  return ((np.asarray(jnp.clip(x, -1, 1)) + 1) * 127.5).round().astype(np.uint8)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir")
  p.add_argument("--cond-scale", type=float, default=3.0)
  p.add_argument("--seed", type=int, default=7)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--motion", action="append", choices=moving_shapes.MOTIONS,
                 help="every caption with this motion instead of the eval prompts (repeatable)")
  p.add_argument("--low-noise-workdir", default=None, help="a second model for the levels below --switch")
  p.add_argument("--low-noise-step", type=int, default=None)
  p.add_argument("--switch", type=float, default=0.5, help="noise level t/T where the low-noise model takes over")
  args = p.parse_args()
  gen = generate.load_generator(args.workdir, step=args.step, low_noise_workdir=args.low_noise_workdir,
                                low_noise_step=args.low_noise_step, switch=args.switch)
  run = gen.run
  sched = run.sched
  if args.motion:
    prompts = [q for q in moving_shapes.captions("all") if metrics.prompt_labels(q)["motion"] in args.motion]
  else:
    prompts = [q for q, _ in run_eval.eval_prompts()]
  x0 = vdm.to_model_space(jnp.asarray(run_eval.real_videos(prompts, args.seed)))
  tok, mask = map(jnp.asarray, run.text_encoder.encode(prompts))
  evaluator = ev.default_evaluator()

  model_fn, pred = vdm.guided_denoiser(gen.params, tok, mask, model=run.model, sched=sched,
                                       prediction=gen.config.diffusion.prediction, cond_scale=args.cond_scale,
                                       low_noise=gen.low_noise)

  def x0_eps(x, t):
    x0p = jnp.clip(gaussian.model_output_to_x0_eps(sched, x, t, model_fn(x, t), pred)[0], -1, 1)
    return x0p, gaussian.predict_eps_from_x0(sched, x, t, x0p)

  @jax.jit
  def ddim_from(x, times, prev):
    def step(x, ts):
      t = jnp.full((x.shape[0],), ts[0], jnp.int32)
      x0p, eps = x0_eps(x, t)
      ab_prev = jnp.where(ts[1] >= 0, sched.alphas_cumprod[jnp.maximum(ts[1], 0)], 1.0)
      return jnp.sqrt(ab_prev) * x0p + jnp.sqrt(1 - ab_prev) * eps, None
    return jax.lax.scan(step, x, (times, prev))[0]

  def accuracy(videos):
    videos = to_uint8(videos)
    right = metrics.correctness(evaluator.read(videos), prompts)
    text = " ".join(f"{k} {v:4.0%}" for k, v in metrics.accuracy(right).items())
    if not args.motion:
      return text
    turns = metrics.rotation_turn(videos, prompts)
    return f"{text} [{metrics.motion_line(metrics.by_motion(right, prompts, turns))}]"

  if args.motion:
    print(f"real clips: {accuracy(x0)}", flush=True)

  with run.context():
    for frac in FRACTIONS:
      t0 = min(int(frac * sched.num_timesteps), sched.num_timesteps - 1)
      t = jnp.full((len(prompts),), t0, jnp.int32)
      x_t = gaussian.q_sample(sched, x0, t, jax.random.normal(jax.random.key(t0), x0.shape))
      times = np.round(np.linspace(t0, 0, max(2, int(50 * frac)))).astype(np.int32)
      prev = np.append(times[1:], -1).astype(np.int32)
      one_shot = jax.jit(x0_eps)(x_t, t)[0]
      print(f"t0/T {frac:.1f} | x0 prediction: {accuracy(one_shot)} | DDIM from t0: "
            f"{accuracy(ddim_from(x_t, jnp.asarray(times), jnp.asarray(prev)))}", flush=True)


if __name__ == "__main__":
  main()
