"""Text-to-video diffusion (3D U-Net, Ho et al. 2022) on the built-in moving-shapes data.

Run (the README's main command does this for variant=demo):
  vidgen train --config configs/vdm_shapes.py:variant=demo --workdir workdirs/vdm_demo
  vidgen sample --workdir workdirs/vdm_demo --prompt "a red circle moving right" --out red.gif

Arguments (after ':', comma separated):
  variant   demo | dit | S | B | L   model and run size (table below).
  runlocal  True shrinks everything to a seconds-long smoke run (tests, CI).

  variant  denoiser                            data         steps   expected
  demo     U-Net dim 32, mults (1,2), patch 4, xattn 8x32x32 2000  ~10-16 min on a 2-core CPU
  dit      transformer dim 128, depth 6, 4x4x2 tubelets 8x32x32 2000
  S        dim 32, mults (1,2,4) (VDM-S bench)  8x32x32      20k     a GPU hour
  B        dim 128, mults (1,2,4,8)            16x64x64     200k    TPU v5p-8
  L        dim 320, mults (1,2,4,8), ~1B       16x64x64     500k    TPU v5p pod, fsdp

Text enters twice: the masked-mean pooled prompt embedding through FiLM (the reference's only path) and the
token embeddings through cross-attention. Condition dropout (cfg_drop_prob) trains the null condition so that
classifier-free guidance at sampling (sample.cond_scale) means something; the reference leaves it at 0.
"""
from vidgen_jax.configs import ConfigDict, parse_arg

_VARIANTS = {
    # demo: sized for the README's 15-minute CPU budget; patch 4 runs the U-Net on an 8x8 grid of 4x4 patches
    # (0.26 s per batch-16 step on 2 cores, against 1.24 s with patch 2 and ~5 s without patching).
    # Motion from text is limited by training length (README, Results): motion seen / held-out 10 / 18% at
    # 2000 steps, 56 / 50% with train.num_steps=8000 (joint 56 / 46%, shape 90 / 86%), 85 / 82% with 16000 (97 min).
    # Per clip seen, not per update: batch 4 for 8000 steps (the same 32k clips, same CPU time) gives 17 / 18%.
    "demo": dict(dim=32, mults=(1, 2), heads=2, dim_head=32, patch=4, linear_attn=False, image=32, frames=8,
                 batch=16, steps=2000, lr=1e-3, prediction="x0"),
    # dit: the video diffusion transformer (model.kind='dit', our addition) on 4x4x2 tubelet tokens (4 x 8 x 8 =
    # 256 tokens per clip), full space-time attention in every block.
    # Measured (2000 steps): motion 12 / 14%. With --config.model.patch_size=8 (64 tokens, 5.4 steps/s)
    # 4000 steps at lr 1e-3 fit in 760 s: motion 10 / 7% (README, Results).
    "dit": dict(kind="dit", dim=128, depth=6, mults=(1,), heads=4, dim_head=32, patch=4, temporal_patch=2,
                linear_attn=False, image=32, frames=8, batch=16, steps=2000, lr=5e-4, prediction="x0"),
    # S: the VDM-S benchmark architecture of DESIGN.md.
    "S": dict(dim=32, mults=(1, 2, 4), heads=8, dim_head=32, patch=1, linear_attn=True, image=32, frames=8,
              batch=32, steps=20_000, lr=3e-4, prediction="v"),
    "B": dict(dim=128, mults=(1, 2, 4, 8), heads=8, dim_head=64, patch=1, linear_attn=True, image=64, frames=16,
              batch=64, steps=200_000, lr=1e-4, prediction="v"),
    "L": dict(dim=320, mults=(1, 2, 4, 8), heads=16, dim_head=64, patch=1, linear_attn=True, image=64,
              frames=16, batch=256, steps=500_000, lr=1e-4, prediction="v"),
}


def get_config(arg=None):
  arg = parse_arg(arg, variant="demo", runlocal=False)
  if arg.variant not in _VARIANTS:
    raise ValueError(f"variant {arg.variant!r} unknown; choose one of {sorted(_VARIANTS)}")
  v = _VARIANTS[arg.variant]
  dim, mults, heads, dim_head, patch = v["dim"], v["mults"], v["heads"], v["dim_head"], v["patch"]
  image, frames, batch, steps, lr = v["image"], v["frames"], v["batch"], v["steps"], v["lr"]

  c = ConfigDict()
  c.family = "vdm"
  c.variant = arg.variant
  c.seed = 0

  c.data = ConfigDict()
  c.data.source = "moving_shapes"   # moving_shapes | folder
  c.data.folder = ""                # for source=folder: GIF/MP4 files with same-named .txt captions
  c.data.image_size = image
  c.data.num_frames = frames
  c.data.num_examples = 1_000_000   # procedural: examples before the index wraps (an "epoch")
  c.data.split = "train"            # moving shapes: train excludes the held-out combinations
  c.data.motions = ""               # moving shapes: comma-separated motions to train on only; "" = all
  c.data.motion_weights = ""        # moving shapes: "rotating clockwise=4, ...": a motion's clips w times as often
  # moving shapes: this fraction of the clips turn round (our addition; MovingShapes): the first k frames
  # (k uniform in [1, frames/2]) run opposite to the caption's motion and are given to the model clean, as the
  # context of a story's scene change ("right" then "left"); the loss trains the rest. 0 = plain clips.
  # Measured (both experts fine-tuned 3000 steps at 0.3): the 32-frame story within the noise of without
  # (per segment 89.5, 86.8, 88.6, 83.3% against 88.6, 86.8, 85.1, 82.5%, three seeds; docs/ablations.md).
  c.data.reversal_prob = 0.0
  c.data.pad = "zeros"              # folder clips shorter than num_frames: zeros | last
  c.data.seed = 0

  c.text = ConfigDict()
  c.text.encoder = "minilm"         # minilm (bundled all-MiniLM-L6-v2) | bert | t5 (HF dirs with safetensors)
  c.text.path = ""                  # checkpoint directory for bert / t5
  c.text.max_length = 16

  c.model = ConfigDict()
  # unet: the 3-D U-Net (Ho et al.; the reference architecture). dit: a video diffusion transformer (our
  # addition, vidgen_jax/models/video_dit.py): patch tokens, full space-time self-attention, text
  # cross-attention and adaLN-zero conditioning in each of model.depth blocks of width model.dim, with
  # attn_heads x attn_dim_head attention. The U-Net-only options below (dim_mults, init_kernel_size, linear
  # attention, frame_cond_mlp, ...) do not apply to it.
  c.model.kind = v.get("kind", "unet")
  c.model.depth = v.get("depth", 6)  # dit only: transformer blocks
  c.model.dim = dim
  c.model.dim_mults = mults
  c.model.attn_heads = heads
  c.model.attn_dim_head = dim_head
  c.model.patch_size = patch        # space-to-depth: the U-Net runs at image_size / patch_size
  # >1: also fold this many consecutive frames into one U-Net frame (tubelets, like C-ViViT's patches; our
  # addition): motion inside a tubelet becomes local, and the U-Net costs ~1/temporal_patch_size as much.
  # Needs frame_noise_prob = 0, joint_images = 0 and num_frames divisible by it. 1 = per-frame (reference).
  c.model.temporal_patch_size = v.get("temporal_patch", 1)
  c.model.init_kernel_size = 7
  c.model.use_sparse_linear_attn = v["linear_attn"]
  c.model.cross_attention = True    # attend to text tokens (our addition); False = reference architecture
  # >0: learned absolute frame-index embedding (our addition); 0 = off. Measured on the demo: final loss
  # 0.011 vs 0.02, but motion-from-text unchanged (13% vs 11%), so it stays off.
  c.model.max_frames_embedding = 0
  # >0: hidden width of a per-token MLP whose masked mean is added to the pooled FiLM condition (our
  # addition); 0 = the reference's raw pooled embedding only. Measured on the demo (256, 2000 steps): motion
  # still at chance (heuristic read-out 7% seen, 12.5% held-out); the samples barely move at all, so the
  # bottleneck is learning motion, not separating the prompts. Off until it is shown to help.
  c.model.text_cond_mlp = v.get("text_cond_mlp", 0)
  # >0: hidden width of an MLP of [time + text embedding, frame index] added to each frame's FiLM embedding
  # (our addition): lets the text modulate each frame differently. 0 = one FiLM condition for all frames.
  # Measured on the demo (128, 2000 steps, motion seen / held-out): 21 / 21% against 10 / 18%, within the
  # evaluation's spread (38 samples per split); with position_features=4 23 / 18%. Off until it clearly helps.
  c.model.frame_cond_mlp = v.get("frame_cond_mlp", 0)
  # >0: frequencies of a 2-D Fourier embedding of (row, column) added after the first conv (our addition):
  # absolute positions for the space-only convs. 0 = the reference (position only from zero padding).
  c.model.position_features = v.get("position_features", 0)
  # >0: kernel size of a zero-initialised temporal conv in every ResnetBlock (pseudo-3D, our addition);
  # 0 = the reference's space-only resnets.
  c.model.temporal_conv = v.get("temporal_conv", 0)
  # Full space-time attention over all frames and positions at once (axial rotary over frame, row, column;
  # our addition): "mid" replaces the middle's per-frame spatial attention, "all" also adds it after every
  # level's temporal attention; "none" = the reference's factorised attention. Measured on the demo (2000
  # steps, motion seen / held-out): "mid" 19 / 11%, "all" 8 / 7%, against 10 / 18%: no gain.
  c.model.space_time_attention = v.get("space_time_attention", "none")
  # True: add g(t) * W x, a learned time-gated 1x1 conv of the (patched) input, to the U-Net's output (our
  # addition; models/unet3d.py). Gives an x0-predicting patched U-Net the identity path that eps/v get from
  # their parameterisation; False = the reference. Measured on the demo (2000 steps): with x0 no gain
  # (rotations kept from t/T 0.3: 7 / 7%); with v it removes v's speckle (background 49 -> 9 of 255) and
  # keeps 43 / 43% of the rotations (plain v 100 / 93%, with speckle).
  c.model.input_skip = v.get("input_skip", False)
  c.model.remat = False             # rematerialise blocks in the backward pass (memory for compute)

  c.diffusion = ConfigDict()
  c.diffusion.timesteps = 1000
  c.diffusion.schedule = "cosine"
  # >1 shifts every step's log-SNR down by 2 log(shift) (more noise; simple diffusion). 1 = the reference.
  c.diffusion.schedule_shift = v.get("schedule_shift", 1.0)
  # eps (the reference) | v | x0. The demo predicts x0: with 4x4 patches, 48 input channels pass through a
  # 32-wide network that cannot carry per-pixel noise, so eps/v left speckle (median background 54/255 in a
  # measured run) while x0 (clean, low-rank patches) gave black backgrounds (median 1/255).
  # But x0's loss gives the low noise levels almost no gradient, and the demo then cannot keep a turned shape:
  # from real rotating clips noised to t/T 0.3 it keeps 7 / 0% of the rotations, v 100 / 93% (2000 steps;
  # docs/ablations.md, "What makes the demo lose rotations").
  c.diffusion.prediction = v["prediction"]
  # Training timesteps: with probability high_noise_prob a sample's t is drawn from [high_noise_from * T, T)
  # instead of [0, T) (our addition; 0 = the reference's uniform draw): more training where the sampler
  # decides layout and motion. Measured on the demo (0.5, with frame_cond_mlp=128): motion 10 / 4%, worse.
  c.diffusion.high_noise_prob = v.get("high_noise_prob", 0.0)
  c.diffusion.high_noise_from = 0.8
  # (lo, hi): train on the noise levels t/T in [lo, hi) only, an expert for them (eDiff-I, our addition);
  # with per-frame levels the noisiest frame's is in [lo, hi), the others anywhere below hi.
  # Such a model samples only inside an expert split: e.g. a fine-tune with (0, 0.5) is the
  # --low-noise-workdir of a split at --switch 0.5 or below (docs/ablations.md). () = every level.
  c.diffusion.t_range = v.get("t_range", ())
  # Per-frame noise levels (Diffusion Forcing, our addition): with this probability a training clip gets
  # one independent timestep per frame instead of one for the clip (0 = the reference). The model then
  # learns to continue a video from frames it sees well into frames it barely sees, which pyramid sampling
  # (sample.frame_offset) and video prediction use. Measured on the demo (0.5, 2000 steps, motion seen /
  # held-out): 10 / 14% with plain DDIM, 15 / 18% with frame_offset 4; continuing 2 clean real frames
  # (--method clean) 27 / 18%. As fine-tuning of the 16000-step demo (16000 steps more at 0.5, 512k clips in
  # all): generation 85 / 86%, prediction with --method clean 85 / 86% (reconstruction guidance before it:
  # 71 / 50%), stories 87-71% per segment (docs/ablations.md). Off for the 2000-step demo.
  c.diffusion.frame_noise_prob = v.get("frame_noise_prob", 0.0)
  # Clean prefixes (our addition): with this probability a clip's first k frames (k uniform in [1, frames/2])
  # are clean, at timestep 0, and the others share one level: exactly the input that video prediction and
  # extension by --method clean give the model, which independent per-frame levels almost never draw.
  # The other clips keep frame_noise_prob's draw. Measured (0.5, with frame_noise_prob 0.5, as the high-noise
  # expert above t/T 0.5 of stop 36's split, 6000 fine-tune steps): prediction from 2 frames by clean 90.3 /
  # 91.7% over three seeds (82.6 / 85.7% before), generation unchanged (docs/ablations.md). 0 = off (the reference).
  c.diffusion.clean_prefix_prob = v.get("clean_prefix_prob", 0.0)
  # >0: λ, the extra weight of the x0 error's change over frames (our addition; needs prediction x0): the
  # loss becomes |mean-over-frames error|² + (1 + λ)|error − that mean|², so motion errors count 1 + λ
  # times as much as appearance errors; the optimum is unchanged. 0 = the plain loss (the reference).
  # Measured on the demo (λ = 3, 2000 steps, motion seen / held-out): 21 / 4% against 10 / 18%; off.
  c.diffusion.temporal_loss_weight = v.get("temporal_loss_weight", 0.0)
  c.diffusion.loss = "l2"           # l1 (reference default) | l2
  # (lo, hi): weigh each sample's L2 loss by clip(SNR(t), lo, hi) in units of the clean video's squared error,
  # whatever the prediction (our addition; losses.snr_loss_weights). () = the prediction's own weighting
  # (x0: 1, eps: SNR, v: SNR + 1; the reference). (0, 5) is Min-SNR-5; (1, 5) keeps x0's weight at high noise
  # and counts low noise up to 5 times. Measured on the demo (2000 steps, rotations kept from t/T 0.3): (1, 5)
  # 7 / 7% (plain x0 7 / 0%); (1, 100000), v's weighting, 36 / 43% but samples from noise break apart.
  c.diffusion.loss_snr_clip = v.get("loss_snr_clip", ())
  c.diffusion.cfg_drop_prob = 0.1   # probability of training a sample with the null condition
  c.diffusion.prob_focus_present = 0.0

  c.sample = ConfigDict()
  c.sample.sampler = "ddim"         # ddim | ddpm | dpmpp2m (DPM-Solver++(2M): second order, for few steps)
  c.sample.steps = 50               # ddim/dpmpp2m steps (ddpm always runs all timesteps)
  c.sample.eta = 0.0
  # >0: pyramid sampling (ddim only; needs diffusion.frame_noise_prob > 0 in training): frame f starts
  # frame_offset * f steps after frame 0, so each frame is denoised after the earlier ones have taken shape.
  # steps + frame_offset * (frames - 1) model calls. 0 = every frame in step (the reference).
  c.sample.frame_offset = v.get("frame_offset", 0)
  c.sample.cond_scale = 3.0         # classifier-free guidance weight; 1 = no guidance
  c.sample.clip_denoised = True
  # Reconstruction guidance weight w_r (Ho et al. eq. 7) for conditional sampling: video prediction, long
  # videos by extension, super-resolution (vidgen sample --num-frames/--segment-frames/--given/--lowres).
  c.sample.reconstruction_weight = 5.0
  c.sample.prompts = (
      "a red circle moving right", "a green square moving up", "a blue triangle moving left",
      "a yellow circle moving down", "a magenta square growing", "a cyan triangle shrinking",
      "a white square rotating clockwise", "a red triangle moving down and right",
  )

  c.optim = ConfigDict()
  c.optim.lr = lr
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"          # cosine | constant (after warm-up)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0           # global-norm clipping; 0 disables
  c.optim.ema_decay = 0.995

  c.train = ConfigDict()
  c.train.batch_size = batch        # global batch (all devices, all processes)
  c.train.grad_accum = 1            # micro-batches per step (scanned inside the jitted step)
  # Joint image+video training (Ho et al. sec. 3): K extra images per video (frames of other videos of the
  # batch, with their captions), kept out of temporal attention by masks. 0 = video only. Costs (T+K)/T.
  # Measured on the demo (K = 0 / 4 / 8): joint 8 / 15 / 6% seen, FED 64.6 / 52.9 / 63.6 (docs/ablations.md).
  c.train.joint_images = v.get("joint_images", 0)
  c.train.num_steps = steps
  c.train.compute_dtype = "float32" # float32 | bfloat16 (params and optimizer stay float32)
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.keep_ckpts = 2
  # Fine-tuning: a workdir whose checkpoint (its latest, or step init_from_step) gives this run's params and
  # EMA; step, optimizer and data position start fresh. Needs the same model and text config; used only while
  # this workdir has no checkpoint of its own. "" = start from the random init.
  c.train.init_from = ""
  c.train.init_from_step = -1
  c.train.sample_every = 0          # 0: sample only at the end
  c.train.max_bad_steps = 20        # abort after this many consecutive non-finite steps

  c.mesh = ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.sharding = ConfigDict()
  c.sharding.preset = "fsdp"        # data | fsdp | fsdp_tensor (vidgen_jax/parallel/sharding.py)
  c.sharding.extra_rules = ()       # ((logical, mesh_axis), ...) taking precedence over the preset

  c.eval = ConfigDict()
  c.eval.num_samples = 2            # samples per evaluation prompt

  if arg.runlocal:
    c.data.image_size, c.data.num_frames = 16, 4
    c.model.dim, c.model.dim_mults, c.model.attn_heads, c.model.attn_dim_head = 8, (1, 2), 2, 8
    c.model.patch_size, c.model.use_sparse_linear_attn = 1, True
    if c.model.kind == "dit":
      c.model.dim, c.model.depth, c.model.patch_size = 16, 2, 2
    c.text.max_length = 12
    c.train.batch_size, c.train.num_steps = 8, 4
    c.train.log_every, c.train.ckpt_every = 2, 2
    c.optim.warmup_steps = 2
    c.sample.steps = 4
    c.sample.prompts = c.sample.prompts[:2]
    c.eval.num_samples = 1
  return c
