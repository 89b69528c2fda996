"""The `vidgen` command line (also `python -m vidgen_jax`).

  vidgen train  --config configs/<file>.py[:args] --workdir DIR [--config.key=value ...] [--multihost]
  vidgen sample --workdir DIR --prompt "a red circle moving left" [--prompt ...] --num-samples N --seed S --out FILE
                [--num-frames 32] [--segment-frames 8] [--given VIDEO --given-frames 2] [--lowres VIDEO]
                [--method reconstruction|replacement|clean] [--guidance-weight W]
  vidgen eval   --workdir DIR [--num-samples N] [--seed S] [--task extension|story|prediction [--method M]]
  vidgen sample|eval ... --low-noise-workdir DIR2 [--switch 0.5]
                                                     two models split the steps by noise level (eDiff-I)
  vidgen evaluator train [--out FILE] [--steps N]    rebuild the shapes evaluator (deterministic)
  vidgen evaluator test [--weights FILE]             its accuracy on held-out real clips
  vidgen convert --from video-diffusion-pytorch --checkpoint FILE --workdir DIR --image-size N --num-frames N
  vidgen convert --from phenaki-pytorch --checkpoint FILE --workdir DIR --image-size N --num-frames N --patch-size P
                                                     import a PyTorch checkpoint as a sampling workdir
  vidgen bench vdm-s|cvivit-s|maskgit-s [--torch-python PY]
                                                     time train (and denoise) steps vs the PyTorch reference
  vidgen compile --config FILE[:args] --topology v5p:2x2x2 [--preset data,fsdp,fsdp_tensor] [--remat both]
                 [--utilisation 0.4] [--config.key=value ...]
                                                     compile the train step ahead of time for a TPU slice:
                                                     per-chip memory, FLOPs and step time per preset
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
  c = s.add_argument_group(
      "long videos, stories, prediction, super-resolution (conditional sampling, Ho et al. sec. 3.2)")
  c.add_argument("--num-frames", type=int, default=None,
                 help="frames per video; beyond the model's window the video is extended window by window")
  c.add_argument("--segment-frames", type=int, default=None,
                 help="the prompts form ONE story, this many frames each (each scene continues the last)")
  c.add_argument("--given", default=None, metavar="VIDEO", help="continue this video (video prediction)")
  c.add_argument("--given-frames", type=int, default=2, help="how many first frames of --given to keep")
  c.add_argument("--lowres", default=None, metavar="VIDEO",
                 help="super-resolve this low-resolution video (its side must divide the model's)")
  c.add_argument("--method", choices=("reconstruction", "replacement", "clean"), default="reconstruction",
                 help="how known frames condition the sampler (replacement: the baseline; clean: known "
                      "frames at timestep 0, for models trained with diffusion.frame_noise_prob or "
                      "clean_prefix_prob > 0)")
  c.add_argument("--guidance-weight", type=float, default=None,
                 help="reconstruction guidance weight w_r (default: config sample.reconstruction_weight)")
  c.add_argument("--overlap", type=int, default=None, help="known frames per extension window (default: half)")

  e = sub.add_parser("eval", help="sample the fixed evaluation prompt set and write metrics")
  e.add_argument("--workdir", required=True)
  e.add_argument("--num-samples", type=int, default=None, help="samples per prompt (default: config)")
  e.add_argument("--seed", type=int, default=0)
  e.add_argument("--sweep", default=None, metavar="NAME=V1,V2,...",
                 help="evaluate once per value of cond_scale, steps or frame_offset; writes "
                      "eval/sweep_NAME.{json,png}")
  _sampling_flags(e)
  e.add_argument("--task", choices=("generation", "extension", "story", "prediction", "superres"),
                 default="generation",
                 help="extension: --num-frames long videos scored segment by segment; story: the same, the "
                      "prompt's motion and its opposite alternating by segment; prediction: continue "
                      "--given-frames frames of real clips; superres: --factor times downsampled real clips")
  e.add_argument("--factor", type=int, default=2, help="superres: downsampling factor of the input")
  e.add_argument("--num-frames", type=int, default=32, help="extension, story: frames per video")
  e.add_argument("--given-frames", type=int, default=2, help="prediction: given frames")
  e.add_argument("--method", choices=("reconstruction", "replacement", "clean"), default="reconstruction")
  e.add_argument("--guidance-weight", type=float, default=None, help="reconstruction guidance weight w_r")
  e.add_argument("--overlap", type=int, default=None, help="extension, story: known frames per window")

  v = sub.add_parser("evaluator", help="the shapes evaluator network that `eval` scores videos with")
  vsub = v.add_subparsers(dest="action", required=True)
  vt = vsub.add_parser("train", help="train it from scratch on procedural clips (deterministic)")
  vt.add_argument("--out", default=None, help="weights file (default: the packaged asset)")
  vt.add_argument("--steps", type=int, default=None)
  vt.add_argument("--seed", type=int, default=0)
  vx = vsub.add_parser("test", help="accuracy on held-out real clips")
  vx.add_argument("--weights", default=None, help="weights file (default: the packaged asset)")
  vx.add_argument("--num", type=int, default=2000, help="clips per test set")

  b = sub.add_parser("bench", help="time a benchmark config (DESIGN.md), side by side with the PyTorch reference")
  b.add_argument("name", choices=("vdm-s", "cvivit-s", "maskgit-s"))
  b.add_argument("--reps", type=int, default=10, help="timed calls per measurement (median reported)")
  b.add_argument("--torch-python", default=None,
                 help="interpreter with torch + the reference installed (default: this one)")
  b.add_argument("--no-reference", action="store_true", help="skip timing the PyTorch reference")
  b.add_argument("--no-sampling", action="store_true", help="vdm-s: skip the 50-step sampling measurement")
  b.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                 help="our layers' compute dtype (params and optimizer stay float32); bfloat16 also runs the "
                      "reference under torch's bfloat16 autocast")
  _convert_parser(sub)
  _compile_parser(sub)
  return p


def _compile_parser(sub):
  c = sub.add_parser("compile", help="compile the train step ahead of time for a TPU topology (no TPU needed): "
                                     "per-chip memory, FLOPs and implied step time for each sharding preset")
  c.add_argument("--config", required=True, help="config file, e.g. configs/vdm_shapes.py:variant=L")
  c.add_argument("--topology", required=True,
                 help="GENERATION:SHAPE in chips, e.g. v5p:2x2x2 (8 chips), v5e:4x4, v4:2x2x1, v6e:2x4 (needs "
                      "pip install -e .[tpu-aot]); or cpu[:N] for N local CPU devices")
  c.add_argument("--preset", default="data,fsdp,fsdp_tensor",
                 help="comma separated: data, fsdp, fsdp_tensor, or config (the config's own mesh and preset)")
  c.add_argument("--remat", choices=("off", "on", "both", "config"), default="config",
                 help="model.remat for each preset (default: the config's value)")
  c.add_argument("--tensor", type=int, default=2, help="tensor-parallel degree of fsdp_tensor")
  c.add_argument("--utilisation", type=float, default=0.4,
                 help="fraction of peak bf16 FLOP/s assumed for the implied step time")
  c.add_argument("--peak-tflops", type=float, default=None, help="override the chip's peak (TFLOP/s per chip)")
  c.add_argument("--hbm-gib", type=float, default=None, help="override the chip's memory (GiB per chip)")
  c.add_argument("--timeout", type=float, default=3600, help="seconds allowed per compile")


def _convert_parser(sub):
  c = sub.add_parser("convert", help="import a PyTorch checkpoint as a workdir that `vidgen sample` uses",
                     description="Architecture flags default to what the checkpoint's shapes say; given ones "
                                 "must agree with the weights.")
  c.add_argument("--from", dest="source", required=True, choices=("video-diffusion-pytorch", "phenaki-pytorch"))
  c.add_argument("--checkpoint", required=True,
                 help=".safetensors, or .pt/.pth (needs the [torch] extra): a Unet3D or GaussianDiffusion "
                      "state dict, or the reference Trainer's model-N.pt; phenaki-pytorch: a CViViT state dict "
                      "(or CViViTTrainer's vae.N[.ema].pt) -> a C-ViViT workdir, a Phenaki state dict (or "
                      "PhenakiTrainer's model-N.pt) -> a Phenaki workdir with its tokenizer in WORKDIR/tokenizer")
  c.add_argument("--workdir", required=True, help="new workdir to write")
  c.add_argument("--which", choices=("ema", "model"), default="ema",
                 help="Trainer (video-diffusion) or EMA-wrapper (CViViTTrainer vae.N.ema.pt) weights")
  c.add_argument("--image-size", type=int, required=True, help="GaussianDiffusion / CViViT image_size")
  c.add_argument("--num-frames", type=int, required=True,
                 help="GaussianDiffusion num_frames; phenaki-pytorch: the clip length, 1 + k * temporal patch")
  c.add_argument("--timesteps", type=int, default=None,
                 help="GaussianDiffusion timesteps (default: the checkpoint's schedule, else 1000)")
  c.add_argument("--loss", choices=("l1", "l2"), default="l1", help="GaussianDiffusion loss_type")
  c.add_argument("--step", type=int, default=None, help="step to record (default: the Trainer's, else 0)")
  a = c.add_argument_group("reference Unet3D arguments (default: read off the checkpoint)")
  for flag in ("dim", "cond-dim", "attn-heads", "attn-dim-head", "init-kernel-size", "resnet-groups"):
    a.add_argument(f"--{flag}", type=int, default=None)
  a.add_argument("--dim-mults", default=None, help="comma separated, e.g. 1,2,4,8")
  a.add_argument("--use-sparse-linear-attn", action=argparse.BooleanOptionalAction, default=None)
  a.add_argument("--use-bert-text-cond", action="store_true", help="cond_dim 768 (BERT-base)")
  t = c.add_argument_group("text encoder for a conditional checkpoint (default: by cond_dim)")
  t.add_argument("--text-encoder", choices=("minilm", "bert", "t5"), default=None)
  t.add_argument("--text-path", default="", help="Hugging Face model directory (bert, t5)")
  t.add_argument("--text-max-length", type=int, default=None)
  s = c.add_argument_group("sampling defaults written to the config")
  s.add_argument("--sampler", choices=("ddim", "ddpm", "dpmpp2m"), default=None, help="ddpm: the reference's sampler")
  s.add_argument("--steps", type=int, default=None)
  s.add_argument("--cond-scale", type=float, default=None,
                 help="guidance weight (reference defaults: video-diffusion 1, phenaki 3)")
  s.add_argument("--temperature", type=float, default=None, help="phenaki: MaskGIT sampling temperature (0.9)")
  p = c.add_argument_group("phenaki-pytorch arguments (the rest is read off the checkpoint)")
  p.add_argument("--patch-size", type=int, default=None,
                 help="CViViT patch_size (required: the weights only store channels * patch area)")
  p.add_argument("--no-critic", action="store_true",
                 help="leave the critic out (required for a SelfCritic, which the phenaki family lacks)")


def _sampling_flags(p):
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--sampler", choices=("ddim", "ddpm", "dpmpp2m"), default=None,
                 help="dpmpp2m: DPM-Solver++(2M), second order, for few steps")
  p.add_argument("--steps", type=int, default=None, help="sampler steps (ddim, dpmpp2m)")
  p.add_argument("--cond-scale", type=float, default=None, help="classifier-free guidance weight")
  p.add_argument("--frame-offset", type=int, default=None,
                 help="video diffusion, ddim: pyramid sampling, frame f starts this many steps after frame f-1 "
                      "(needs a model trained with diffusion.frame_noise_prob > 0; default: config)")
  p.add_argument("--fps", type=int, default=8)
  x = p.add_argument_group("expert split by noise level (video diffusion; eDiff-I)")
  x.add_argument("--low-noise-workdir", default=None, metavar="DIR",
                 help="a second video-diffusion workdir (same schedule, text encoder and video shape) whose "
                      "model denoises the steps below --switch; --workdir's model the others")
  x.add_argument("--low-noise-step", type=int, default=None, help="its checkpoint step (default: latest)")
  x.add_argument("--switch", type=float, default=0.5,
                 help="the noise level t/T in [0, 1] where the low-noise model takes over (0: --workdir's "
                      "model alone, 1: the low-noise model alone)")
  x.add_argument("--low-noise-cond-scale", type=float, default=None, metavar="W",
                 help="the low-noise model's own classifier-free guidance weight (default: --cond-scale)")


def _check_frame_offset(args, family, conditional):
  """--frame-offset applies to plain video-diffusion generation only; anything else is a clear error."""
  if args.frame_offset is None:
    return
  if args.frame_offset < 0:
    raise ValueError("--frame-offset must be >= 0")
  if family != "vdm" or conditional:
    raise ValueError("--frame-offset (pyramid sampling) applies to plain video-diffusion generation, not to a "
                     "Phenaki workdir, long videos, stories, prediction or super-resolution")


def _experts(args):
  """load_generator's expert-split arguments from the flags, or None; a stray flag is a clear error."""
  if args.low_noise_workdir is None:
    for flag in ("low_noise_step", "low_noise_cond_scale"):
      if getattr(args, flag) is not None:
        raise ValueError(f"--{flag.replace('_', '-')} needs --low-noise-workdir")
    return None
  if not 0.0 <= args.switch <= 1.0:
    raise ValueError(f"--switch {args.switch}: a noise level t/T in [0, 1]")
  if args.low_noise_cond_scale is not None and not args.low_noise_cond_scale >= 0:
    raise ValueError(f"--low-noise-cond-scale {args.low_noise_cond_scale}: a guidance weight >= 0")
  return {"low_noise_workdir": args.low_noise_workdir, "low_noise_step": args.low_noise_step,
          "switch": args.switch, "low_noise_cond_scale": args.low_noise_cond_scale}


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
  if overrides and args.command not in ("train", "compile"):
    _parser().error(f"--config.* overrides apply to train and compile only, got {overrides[0]}")
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
    if args.command == "convert":
      return _convert(args)
    if args.command == "bench":
      return _bench(args)
    if args.command == "compile":
      return _compile(args, overrides)
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
  import numpy as np
  from vidgen_jax.sample import generate
  from vidgen_jax.io import video as video_io
  if args.num_samples < 1:
    raise ValueError("--num-samples must be at least 1")
  ext = os.path.splitext(args.out)[1].lower()
  if ext not in (".gif", ".mp4", ".npz"):
    raise ValueError(f"--out {args.out!r}: the extension must be .gif, .mp4 or .npz")
  gen = generate.load_generator(args.workdir, step=args.step, **(_experts(args) or {}))
  family = gen.config.get("family", "vdm")
  if family == "cvivit":
    raise ValueError(f"{args.workdir} is a C-ViViT tokenizer (it reconstructs, it does not generate): train a "
                     "Phenaki model on it (configs/phenaki_shapes.py) and sample that")
  if family != "vdm" and (args.lowres or args.given or args.num_frames):
    raise ValueError("--lowres, --given and --num-frames are video-diffusion features; a Phenaki workdir makes "
                     "stories with several --prompt and --segment-frames")
  _check_frame_offset(args, family, args.segment_frames is not None or args.lowres is not None
                      or args.given is not None or bool(args.num_frames))
  sampling = dict(sampler=args.sampler, steps=args.steps, cond_scale=args.cond_scale)
  conditional = dict(method=args.method, guidance_weight=args.guidance_weight, overlap=args.overlap)
  window = gen.config.data.num_frames
  if args.segment_frames is not None:       # one story per sample, through all prompts
    labels = [" / ".join(args.prompt)] * args.num_samples
    videos = gen.generate_long([list(args.prompt)] * args.num_samples, seed=args.seed,
                               num_frames=args.num_frames, segment_frames=args.segment_frames,
                               **conditional, **sampling)
  else:
    labels = [p for p in args.prompt for _ in range(args.num_samples)]
    if args.lowres is not None:
      low = video_io.read_video(args.lowres)
      videos = gen.upsample(np.broadcast_to(low, (len(labels),) + low.shape), labels, seed=args.seed,
                            guidance_weight=args.guidance_weight, **sampling)
    elif args.given is not None or (args.num_frames or window) != window:
      given = None
      if args.given is not None:
        clip = video_io.read_video(args.given, max_frames=args.given_frames)
        if clip.shape[0] < args.given_frames:
          raise ValueError(f"--given {args.given} has {clip.shape[0]} frames, fewer than --given-frames "
                           f"{args.given_frames}")
        given = np.broadcast_to(clip, (len(labels),) + clip.shape)
      videos = gen.generate_long([[p] for p in labels], seed=args.seed, num_frames=args.num_frames or window,
                                 given=given, **conditional, **sampling)
    else:
      frame_offset = {} if args.frame_offset is None else {"frame_offset": args.frame_offset}
      videos = gen.generate(labels, seed=args.seed, **sampling, **frame_offset)
  prompts = labels
  ncols = args.num_samples if args.num_samples > 1 else math.ceil(math.sqrt(len(prompts)))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  video_io.write_videos(args.out, videos, prompts, fps=args.fps, ncols=ncols, scale=2)
  print(f"wrote {len(prompts)} videos ({videos.shape[1]} frames, {videos.shape[2]}x{videos.shape[3]}) "
        f"to {args.out} (checkpoint step {gen.step})")
  return 0


def _eval(args) -> int:
  import json
  from vidgen_jax.eval import metrics as metrics_lib
  from vidgen_jax.eval import run_eval
  from vidgen_jax.train import checkpoint as ckpt_lib
  family = ckpt_lib.read_config(args.workdir).get("family", "vdm")
  _check_frame_offset(args, family, args.task != "generation")
  experts = _experts(args)
  if experts and family != "vdm":
    raise ValueError(f"--low-noise-workdir pairs two video-diffusion models; {args.workdir} is a {family!r} workdir")
  if args.sweep:
    name, sep, values = args.sweep.partition("=")
    if name == "frame_offset" and family != "vdm":
      raise ValueError("--sweep frame_offset (pyramid sampling) applies to video-diffusion workdirs only")
    if not sep or not values:
      raise ValueError(f"--sweep {args.sweep!r}: expected NAME=V1,V2,..., e.g. cond_scale=1,3,6")
    sampling = dict(sampler=args.sampler, steps=args.steps, cond_scale=args.cond_scale,
                    frame_offset=args.frame_offset)
    sampling.pop(name, None)
    result = run_eval.sweep(args.workdir, name, values.split(","), num_samples=args.num_samples,
                            seed=args.seed, step=args.step, fps=args.fps, experts=experts, **sampling)
    for r in result["rows"]:
      g = {s: r[f"generated/{s}"] for s in ("seen", "heldout")}
      print(f"{name}={r[name]:g}: joint seen {g['seen']['joint']:.0%} held-out {g['heldout']['joint']:.0%} | "
            f"FED seen {g['seen']['fed']:.1f} held-out {g['heldout']['fed']:.1f}")
    print("wrote " + " and ".join(result["files"]))
    return 0
  if family == "cvivit":
    from vidgen_jax.eval import tokenizer_eval
    result = tokenizer_eval.evaluate_workdir(args.workdir, num_samples=args.num_samples or 4, seed=args.seed,
                                             step=args.step)
    for split, s in result["scores"].items():
      print(f"{split}: {json.dumps(s)}")
    print(f"wrote {result['dir']}/metrics.json")
    return 0
  if args.task != "generation":
    from vidgen_jax.eval import conditional_eval
    result = conditional_eval.evaluate_workdir(
        args.workdir, args.task, num_samples=args.num_samples or 1, seed=args.seed, step=args.step,
        num_frames=args.num_frames, given=args.given_frames, factor=args.factor, method=args.method,
        guidance_weight=args.guidance_weight, overlap=args.overlap, fps=args.fps, sampler=args.sampler,
        steps=args.steps, cond_scale=args.cond_scale, experts=experts)
    print(json.dumps({k: result[k] for k in ("task", "method", "guidance_weight", "sample_seconds")}))
    for split in ("seen", "heldout"):
      scores = dict(result["scores"][split])
      by_motion = scores.pop("by_motion", None)
      print(f"{split}: {json.dumps(scores)}")
      if by_motion:
        print(f"{split} by prompt motion: {metrics_lib.motion_line(by_motion)}")
      if "ceiling_real" in result:
        print(f"{split} ceiling (real clips continued): {json.dumps(result['ceiling_real'][split])}")
    print(f"wrote {result['dir']}/metrics.json")
    return 0
  metrics = run_eval.evaluate_workdir(args.workdir, num_samples=args.num_samples, seed=args.seed,
                                      step=args.step, sampler=args.sampler, steps=args.steps,
                                      cond_scale=args.cond_scale, frame_offset=args.frame_offset, fps=args.fps,
                                      experts=experts)
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


def _bench(args) -> int:
  import json
  from vidgen_jax import bench
  if args.reps < 1:
    raise ValueError("--reps must be at least 1")
  kwargs = dict(reps=args.reps, torch_python=args.torch_python, with_reference=not args.no_reference,
                compute_dtype=args.compute_dtype)
  if args.name == "vdm-s":
    kwargs["sample_videos"] = not args.no_sampling
  for rec in bench.run(args.name, **kwargs):
    print(json.dumps(rec), flush=True)
  return 0


def _convert(args) -> int:
  if args.source == "phenaki-pytorch":
    from vidgen_jax.convert import phenaki_torch
    vdm_only = {"--timesteps": args.timesteps, "--sampler": args.sampler, "--dim": args.dim,
                "--cond-dim": args.cond_dim, "--attn-heads": args.attn_heads, "--attn-dim-head": args.attn_dim_head,
                "--init-kernel-size": args.init_kernel_size, "--resnet-groups": args.resnet_groups,
                "--dim-mults": args.dim_mults, "--use-sparse-linear-attn": args.use_sparse_linear_attn,
                "--use-bert-text-cond": args.use_bert_text_cond or None}
    given = [flag for flag, v in vdm_only.items() if v is not None]
    if given:
      raise ValueError(f"{', '.join(given)}: video-diffusion-pytorch flag(s); a phenaki-pytorch checkpoint's "
                       "architecture is read off its weights (plus --patch-size)")
    try:
      info = phenaki_torch.convert_to_workdir(
          args.checkpoint, args.workdir, image_size=args.image_size, num_frames=args.num_frames, which=args.which,
          cvivit_kwargs={"patch_size": args.patch_size} if args.patch_size else None,
          critic=False if args.no_critic else None, text_encoder=args.text_encoder, text_path=args.text_path,
          text_max_length=args.text_max_length, steps=args.steps, cond_scale=args.cond_scale,
          temperature=args.temperature, step=args.step)
    except (ModuleNotFoundError, NotImplementedError) as e:   # torch missing for a .pt file; no compat mode
      raise ValueError(str(e)) from None
    c = info["config"]
    if c.family == "cvivit":
      what, hint = f"C-ViViT {c.model.quantizer}", f"vidgen eval --workdir {info['workdir']}"
    else:
      what = (f"Phenaki: tokenizer {info['tokenizer_workdir']}, MaskGIT{' + critic' if c.model.critic else ''}, "
              f"text encoder {c.text.encoder}")
      hint = f"vidgen sample --workdir {info['workdir']} --prompt '...' --out out.gif"
    print(f"wrote {info['workdir']} from {args.checkpoint} ({what}, {info['num_params'] / 1e6:.2f}M parameters, "
          f"{len(info['ignored'])} torch keys dropped as unused, step {info['step']}); try: {hint}")
    return 0
  from vidgen_jax.convert import vdm_torch
  if args.patch_size is not None or args.no_critic or args.temperature is not None:
    raise ValueError("--patch-size, --no-critic and --temperature are phenaki-pytorch flags")
  kwargs = dict(dim=args.dim, cond_dim=args.cond_dim, attn_heads=args.attn_heads, attn_dim_head=args.attn_dim_head,
                init_kernel_size=args.init_kernel_size, resnet_groups=args.resnet_groups,
                use_sparse_linear_attn=args.use_sparse_linear_attn, use_bert_text_cond=args.use_bert_text_cond or None)
  if args.dim_mults:
    try:
      kwargs["dim_mults"] = tuple(int(v) for v in args.dim_mults.split(","))
    except ValueError:
      raise ValueError(f"--dim-mults {args.dim_mults!r}: expected comma separated integers, e.g. 1,2,4,8") from None
  try:
    info = vdm_torch.convert_to_workdir(
        args.checkpoint, args.workdir, image_size=args.image_size, num_frames=args.num_frames,
        reference_kwargs={k: v for k, v in kwargs.items() if v is not None}, which=args.which,
        timesteps=args.timesteps, loss_type=args.loss, text_encoder=args.text_encoder, text_path=args.text_path,
        text_max_length=args.text_max_length, sampler=args.sampler, steps=args.steps,
        cond_scale=1.0 if args.cond_scale is None else args.cond_scale, step=args.step)
  except ModuleNotFoundError as e:   # torch missing for a .pt file
    raise ValueError(str(e)) from None
  kind = "unconditional" if info["config"].model.unconditional else f"text encoder {info['config'].text.encoder}"
  print(f"wrote {info['workdir']} from {args.checkpoint} ({info['kind']}, {info['num_params'] / 1e6:.2f}M "
        f"parameters, {kind}, step {info['step']}); try: vidgen sample --workdir {info['workdir']} "
        "--prompt '...' --out out.gif")
  return 0


def _compile(args, overrides) -> int:
  """One JSON record per (preset, remat) on stdout, each compiled in its own process; a table on stderr."""
  import json
  from vidgen_jax import configs
  from vidgen_jax.parallel import aot
  from vidgen_jax.train import validation
  target = aot.parse_target(args.topology)
  if not 0 < args.utilisation <= 1:
    raise ValueError(f"--utilisation {args.utilisation}: must be in (0, 1]")
  presets = [p.strip() for p in args.preset.split(",") if p.strip()]
  unknown = [p for p in presets if p not in aot.PRESETS + ("config",)]
  if unknown or not presets:
    raise ValueError(f"--preset {args.preset!r}: choose from {', '.join(aot.PRESETS + ('config',))}")
  if target.platform == "tpu" and not aot.have_libtpu():
    raise ValueError(f"--topology {target.spec} needs libtpu (compile-only; no TPU is needed): "
                     "pip install -e .[tpu-aot]")
  config = configs.apply_overrides(configs.load_config_file(args.config), overrides)
  remats = {"off": [False], "on": [True], "both": [False, True], "config": [None]}[args.remat]
  num = target.num_chips
  problems = []
  for p in presets:   # every mesh / batch problem up front, before minutes of compiling
    c = aot.preset_config(config, p, num, tensor=args.tensor)
    problems += [f"preset {p}: {q}" for q in validation.vdm_problems(c, num)]
  if problems:
    raise validation.ConfigError(problems)
  kwargs = dict(tensor=args.tensor, utilisation=args.utilisation,
                peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None,
                hbm_bytes=int(args.hbm_gib * aot.GIB) if args.hbm_gib else None)
  records = []
  for p in presets:
    for remat in remats:
      rec = aot.plan_in_subprocess(config, target, p, remat=remat, timeout=args.timeout, **kwargs)
      print(json.dumps(rec), flush=True)
      records.append(rec)
  print(aot.human_table(records), file=sys.stderr)
  return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
  sys.exit(main())
