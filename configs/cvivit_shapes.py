"""C-ViViT video tokenizer (Phenaki stage 1) on the built-in moving-shapes data.

  vidgen train --config configs/cvivit_shapes.py --workdir workdirs/cvivit
  then configs/phenaki_shapes.py with --config.tokenizer.workdir=workdirs/cvivit

Arguments (after ':'): variant=shapes|S (S: the CViViT-S benchmark model of DESIGN.md), runlocal=True (a
seconds-long smoke run). Clips have 1 + 4 * 2 = 9 frames: the first frame is patched alone, the rest in
2-frame patches, so a clip is 5 token steps of (32/4)^2 = 64 tokens.
"""
from vidgen_jax.configs import ConfigDict, adamw_optim, data_parallel_mesh, moving_shapes_data, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, variant="shapes", runlocal=False)
  c = ConfigDict()
  c.family = "cvivit"
  c.variant = arg.variant
  c.seed = 0

  c.data = moving_shapes_data(image_size=32, num_frames=9)   # 9 = 1 + 4 * temporal_patch_size 2

  c.model = ConfigDict()
  c.model.dim = 128 if arg.variant == "S" else 64
  c.model.patch_size = 4
  c.model.temporal_patch_size = 2
  c.model.spatial_depth = 2
  c.model.temporal_depth = 2
  c.model.heads = 4
  c.model.dim_head = 32
  # lfq (phenaki's default; codebook_size a power of 2) | fsq (levels below; no collapse by construction)
  # | vq (EMA cosine codebook of codebook_size; dead codes re-seeded, train.reseed_dead_codes_after)
  c.model.quantizer = "lfq" if arg.variant == "S" else "fsq"
  c.model.codebook_size = 4096
  # lfq: True computes the entropy loss as vector-quantize-pytorch does (a tokens x codebook_size softmax, log
  # clamped at 1e-5; 18% of the CViViT-S step); False (default) computes it exactly from the code
  # distribution's product form over bits (the clamp moves the entropies by at most ~2e-4 nats)
  c.model.lfq_reference_entropy = False
  # fsq: 8 x 5 x 5 x 5 = 1000 codes. Measured (6000 steps, held-out clips): PSNR 31.7 dB, 70% of the codes
  # used (30.2 dB, 65% at step 3000). (8, 8, 8, 8), 4096 codes: 29.6 dB, 42% after 3000 steps; (8, 8, 8),
  # 512 codes: 28.0 dB, 73% after 2000 (README).
  c.model.fsq_levels = (8, 5, 5, 5)

  c.loss = ConfigDict()
  c.loss.gan_weight = 0.0           # > 0: hinge GAN on one frame per clip with the adaptive weight
  c.loss.gp_weight = 10.0           # gradient penalty of the discriminator on real frames
  c.loss.disc_base_dim = 16
  c.loss.disc_attn_resolutions = (16,)   # feature-map sides where the discriminator has self-attention
  # > 0: VGG16 perceptual distance (LPIPS taps) on one random frame per clip. Needs a LOCAL file of
  # torchvision vgg16 weights (.npz or .safetensors with its `features.{i}.*` keys; other keys ignored),
  # e.g. written where the weights can be had: numpy.savez(path, **{k: v.numpy() for k, v in
  # torchvision.models.vgg16(weights="DEFAULT").state_dict().items()}). Off here: nothing is downloaded.
  c.loss.perceptual_weight = 0.0
  c.loss.perceptual_weights = ""

  c.optim = adamw_optim(lr=1e-3)

  c.train = ConfigDict()
  c.train.batch_size = 16
  c.train.num_steps = 6000          # ~56 min on a 2-core CPU (1.8 steps/s)
  c.train.gan_start = 1000          # GAN terms start here (reconstruction first)
  c.train.reseed_dead_codes_after = 50   # vq: re-seed codes unused this many steps (0 = never)
  c.train.compute_dtype = "float32" # float32 | bfloat16: the layers' matmuls (params, optimizer, losses stay float32)
  c.train.image_steps = 0           # > 0: the first image_steps steps train on single frames (images first)
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.keep_ckpts = 2
  # Fine-tuning: a workdir whose checkpoint (its latest, or step init_from_step) gives this run's params and
  # EMA; step, optimizer and data position start fresh. Needs the same model and text config; used only while
  # this workdir has no checkpoint of its own. "" = start from the random init.
  c.train.init_from = ""
  c.train.init_from_step = -1
  c.train.sample_every = 0
  c.train.max_bad_steps = 20

  c.sample = ConfigDict()
  c.sample.prompts = ("a red circle moving right", "a green square rotating clockwise", "a blue triangle growing")

  data_parallel_mesh(c)
  c.text = ConfigDict()             # unused by the tokenizer; kept so every family's config has one
  c.text.encoder = "minilm"
  c.text.path = ""
  c.text.max_length = 16

  if arg.runlocal:
    c.data.image_size, c.data.num_frames = 16, 5
    c.model.dim, c.model.spatial_depth, c.model.temporal_depth, c.model.heads, c.model.dim_head = 16, 1, 1, 2, 8
    c.model.fsq_levels = (5, 5, 4)
    c.loss.gan_weight, c.loss.disc_base_dim, c.loss.disc_attn_resolutions = 0.1, 4, ()
    c.train.batch_size, c.train.num_steps, c.train.gan_start = 4, 4, 2
    c.train.log_every, c.train.ckpt_every = 2, 2
    c.optim.warmup_steps = 2
    c.sample.prompts = c.sample.prompts[:2]
  return c
