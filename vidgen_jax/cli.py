"""The `vidgen` command line (also `python -m vidgen_jax`).

  vidgen train  --config configs/<file>.py[:args] --workdir DIR [--config.key=value ...] [--multihost]
  vidgen sample --workdir DIR --prompt "a red circle moving left" [--prompt ...] --num-samples N --seed S --out FILE
  vidgen eval   --workdir DIR [--num-samples N] [--seed S]
  vidgen evaluator train [--out FILE] [--steps N]    rebuild the shapes evaluator (deterministic)
  vidgen evaluator test [--weights FILE]             its accuracy on held-out real clips
"""
import argparse
import logging
import math
import os
import sys


def _common_logging(verbose: bool):
  logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                      format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
  for noisy in ("absl", "jax._src", "orbax", "grain", "tensorboardX"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="vidgen", description="Text-to-video generation in JAX/Flax.")
  p.add_argument("-v", "--verbose", action="store_true")
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train a model (resumes from the workdir's latest checkpoint)")
  t.add_argument("--config", required=True, help="config file, e.g. configs/vdm_shapes.py:variant=demo")
  t.add_argument("--workdir", required=True)
  t.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first")
  t.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (for tests)")

  s = sub.add_parser("sample", help="generate videos for prompts from a trained workdir")
  s.add_argument("--workdir", required=True)
  s.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
  s.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--out", required=True, help="output file: .gif, .mp4 or .npz")
  _sampling_flags(s)

  e = sub.add_parser("eval", help="sample the fixed evaluation prompt set and write metrics")
  e.add_argument("--workdir", required=True)
  e.add_argument("--num-samples", type=int, default=None, help="samples per prompt (default: config)")
  e.add_argument("--seed", type=int, default=0)
  e.add_argument("--sweep", default=None, metavar="NAME=V1,V2,...",
                 help="evaluate once per value of cond_scale or steps; writes eval/sweep_NAME.{json,png}")
  _sampling_flags(e)

  v = sub.add_parser("evaluator", help="the shapes evaluator network that `eval` scores videos with")
  vsub = v.add_subparsers(dest="action", required=True)
  vt = vsub.add_parser("train", help="train it from scratch on procedural clips (deterministic)")
  vt.add_argument("--out", default=None, help="weights file (default: the packaged asset)")
  vt.add_argument("--steps", type=int, default=None)
  vt.add_argument("--seed", type=int, default=0)
  vx = vsub.add_parser("test", help="accuracy on held-out real clips")
  vx.add_argument("--weights", default=None, help="weights file (default: the packaged asset)")
  vx.add_argument("--num", type=int, default=2000, help="clips per test set")
  return p


def _sampling_flags(p):
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
  p.add_argument("--steps", type=int, default=None, help="sampler steps (ddim)")
  p.add_argument("--cond-scale", type=float, default=None, help="classifier-free guidance weight")
  p.add_argument("--fps", type=int, default=8)


def _split_overrides(argv):
  """Separates --config.key[=value] overrides (which argparse does not know) from the other arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      overrides.append(a)
      if "=" not in a and i + 1 < len(argv):
        overrides.append(argv[i + 1])
        i += 1
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  argv, overrides = _split_overrides(argv)
  args = _parser().parse_args(argv)
  if overrides and args.command != "train":
    _parser().error(f"--config.* overrides apply to train only, got {overrides[0]}")
  _common_logging(args.verbose)
  try:
    if args.command == "train":
      return _train(args, overrides)
    if args.command == "sample":
      return _sample(args)
    if args.command == "eval":
      return _eval(args)
    if args.command == "evaluator":
      return _evaluator(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"vidgen {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 1


def _init_distributed():
  """jax.distributed.initialize(): auto-detected on TPU pods, Slurm and Open MPI; elsewhere (multi-node GPU)
  from COORDINATOR_ADDRESS, NUM_PROCESSES and PROCESS_ID as exported by launch/gpu.sh."""
  import jax
  env = os.environ
  kwargs = {}
  if env.get("COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = env["COORDINATOR_ADDRESS"]
  if env.get("NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["NUM_PROCESSES"])
  if env.get("PROCESS_ID"):
    kwargs["process_id"] = int(env["PROCESS_ID"])
  jax.distributed.initialize(**kwargs)


def _train(args, overrides) -> int:
  if args.multihost:
    _init_distributed()
  from vidgen_jax import configs
  from vidgen_jax.train import loop
  config = configs.apply_overrides(configs.load_config_file(args.config), overrides)
  loop.train(config, args.workdir, stop_after=args.stop_after)
  return 0


def _sample(args) -> int:
  from vidgen_jax.sample import generate
  from vidgen_jax.io import video as video_io
  if args.num_samples < 1:
    raise ValueError("--num-samples must be at least 1")
  ext = os.path.splitext(args.out)[1].lower()
  if ext not in (".gif", ".mp4", ".npz"):
    raise ValueError(f"--out {args.out!r}: the extension must be .gif, .mp4 or .npz")
  gen = generate.Generator.from_workdir(args.workdir, step=args.step)
  prompts = [p for p in args.prompt for _ in range(args.num_samples)]
  videos = gen.generate(prompts, seed=args.seed, sampler=args.sampler, steps=args.steps,
                        cond_scale=args.cond_scale)
  ncols = args.num_samples if args.num_samples > 1 else math.ceil(math.sqrt(len(prompts)))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  video_io.write_videos(args.out, videos, prompts, fps=args.fps, ncols=ncols, scale=2)
  print(f"wrote {len(prompts)} videos ({videos.shape[1]} frames, {videos.shape[2]}x{videos.shape[3]}) "
        f"to {args.out} (checkpoint step {gen.step})")
  return 0


def _eval(args) -> int:
  from vidgen_jax.eval import run_eval
  if args.sweep:
    name, sep, values = args.sweep.partition("=")
    if not sep or not values:
      raise ValueError(f"--sweep {args.sweep!r}: expected NAME=V1,V2,..., e.g. cond_scale=1,3,6")
    sampling = dict(sampler=args.sampler, steps=args.steps, cond_scale=args.cond_scale)
    sampling.pop(name, None)
    result = run_eval.sweep(args.workdir, name, values.split(","), num_samples=args.num_samples,
                            seed=args.seed, step=args.step, fps=args.fps, **sampling)
    for r in result["rows"]:
      g = {s: r[f"generated/{s}"] for s in ("seen", "heldout")}
      print(f"{name}={r[name]:g}: joint seen {g['seen']['joint']:.0%} held-out {g['heldout']['joint']:.0%} | "
            f"FED seen {g['seen']['fed']:.1f} held-out {g['heldout']['fed']:.1f}")
    print("wrote " + " and ".join(result["files"]))
    return 0
  metrics = run_eval.evaluate_workdir(args.workdir, num_samples=args.num_samples, seed=args.seed,
                                      step=args.step, sampler=args.sampler, steps=args.steps,
                                      cond_scale=args.cond_scale, fps=args.fps)
  print(run_eval.headline(metrics))
  print(f"wrote {metrics['dir']}/metrics.json and grid.png")
  return 0


def _evaluator(args) -> int:
  import json
  from vidgen_jax.eval import evaluator as ev
  from vidgen_jax.eval import evaluator_train
  if args.action == "train":
    kwargs = {"seed": args.seed}
    if args.steps is not None:
      if args.steps < 1:
        raise ValueError("--steps must be at least 1")
      kwargs["steps"] = args.steps
    meta = evaluator_train.build(args.out or ev.ASSET, **kwargs)
    print(json.dumps(meta["accuracy"], indent=1))
    return 0
  evaluator = ev.load(args.weights) if args.weights else ev.default_evaluator()
  print(json.dumps(evaluator_train.report(evaluator, args.num), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
