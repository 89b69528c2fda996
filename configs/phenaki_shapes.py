"""Phenaki stage 2: MaskGIT text-to-token transformer (and Token-Critic) over a trained C-ViViT.

  vidgen train --config configs/phenaki_shapes.py --workdir workdirs/phenaki --config.tokenizer.workdir=workdirs/cvivit
  vidgen sample --workdir workdirs/phenaki --prompt "a red circle moving right" --out red.gif
  vidgen eval --workdir workdirs/phenaki

Arguments: variant=shapes|S (S: the MaskGIT-S benchmark model of DESIGN.md), runlocal=True (smoke run).
Data, frames and image size must match the tokenizer's; the tokenizer is copied (frozen) into this run's
checkpoints.
"""
from vidgen_jax.configs import ConfigDict, adamw_optim, data_parallel_mesh, moving_shapes_data, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, variant="shapes", runlocal=False)
  c = ConfigDict()
  c.family = "phenaki"
  c.variant = arg.variant
  c.seed = 0

  c.tokenizer = ConfigDict()
  c.tokenizer.workdir = ""          # a trained configs/cvivit_shapes.py workdir (required)

  c.data = moving_shapes_data(image_size=32, num_frames=9)   # 9 = 1 + 4 * temporal_patch_size 2

  c.text = ConfigDict()
  c.text.encoder = "minilm"
  c.text.path = ""
  c.text.max_length = 16

  c.model = ConfigDict()
  c.model.dim = 128
  c.model.depth = 4
  c.model.heads = 4
  c.model.dim_head = 32
  c.model.critic = False            # True: also train a Token-Critic that picks the tokens to re-mask
  c.model.critic_depth = 2

  c.optim = adamw_optim(lr=1e-3)

  c.train = ConfigDict()
  c.train.batch_size = 16
  c.train.num_steps = 3000
  c.train.mask_schedule = "cosine"  # cosine | linear | square (also used when decoding)
  c.train.cfg_drop_prob = 0.1       # condition dropout (trains the null text for guidance)
  c.train.image_steps = 0           # > 0: the first image_steps steps train on single frames (images first)
  c.train.compute_dtype = "float32" # float32 | bfloat16: the layers' matmuls (params, optimizer, losses stay float32)
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
  c.sample.steps = 12               # MaskGIT decoding iterations
  c.sample.cond_scale = 3.0
  c.sample.temperature = 1.0        # annealed linearly to 0 over the steps
  c.sample.prompts = ("a red circle moving right", "a green square moving up", "a blue triangle moving left",
                      "a yellow circle moving down")

  c.eval = ConfigDict()
  c.eval.num_samples = 8            # per prompt: 192 seen + 112 held-out samples (~2.5 min on 2 CPU cores)

  data_parallel_mesh(c)

  if arg.runlocal:
    c.data.image_size, c.data.num_frames = 16, 5
    c.model.dim, c.model.depth, c.model.heads, c.model.dim_head, c.model.critic_depth = 16, 1, 2, 8, 1
    c.model.critic = True
    c.text.max_length = 12
    c.train.batch_size, c.train.num_steps = 4, 4
    c.train.log_every, c.train.ckpt_every = 2, 2
    c.optim.warmup_steps = 2
    c.sample.steps = 3
    c.sample.prompts = c.sample.prompts[:2]
    c.eval.num_samples = 1
  return c
