"""Video diffusion: the model built from a config, its loss, the one train step, and the sampler.

Batches are dicts of global arrays:
  video        uint8  (B, T, H, W, 3)
  text_tokens  float  (B, L, D)   token embeddings of the caption from the text encoder
  text_mask    bool   (B, L)
  turn_frame   int32  (B,)       only with data.reversal_prob > 0: frames before it are context (`loss_fn`)
The pooled text condition (masked mean of the tokens) feeds the U-Net's FiLM path; the tokens feed its
cross-attention.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from vidgen_jax.diffusion import conditioning, experts, gaussian, guidance, losses, samplers, schedules
from vidgen_jax.models import patched
from vidgen_jax.models.unet3d import Unconditional, Unet3D
from vidgen_jax.models.video_dit import VideoDiT
from vidgen_jax.train import state as state_lib

# ---- the family interface (vidgen_jax.train.families) ----
NEEDS_TEXT = True
BATCH_NDIMS = {"video": 5, "text_tokens": 3, "text_mask": 2}


def batch_ndims(config) -> dict:
  """BATCH_NDIMS, and 'turn_frame' (B,) when the data has reversal clips (data.reversal_prob > 0)."""
  return {**BATCH_NDIMS, "turn_frame": 1} if config.data.get("reversal_prob", 0.0) > 0 else dict(BATCH_NDIMS)


def validate(config, num_devices: int, num_processes: int = 1):
  from vidgen_jax.train import validation
  return validation.validate_vdm(config, num_devices, num_processes)


def build_components(config, text_encoder) -> dict:
  return {"model": build_model(config, text_encoder.dim), "sched": build_schedule(config)}


def make_state_fn(run):
  def fn(key):
    k_init, k_train = jax.random.split(key)
    variables = init_variables(run.model, run.config, run.text_encoder.dim, k_init)
    return state_lib.create_state(variables, run.tx, k_train)
  return fn


def step_fn(run):
  return functools.partial(train_step, model=run.model, tx=run.tx, sched=run.sched, config=run.config)


def host_batch(run, batch: dict) -> dict:
  from vidgen_jax.data import pipeline
  return pipeline.attach_text(batch, run.text_encoder)


def build_model(config, text_dim: int):
  """The denoiser of config.model: the 3-D U-Net, or with model.kind 'dit' the video diffusion transformer
  (`models.video_dit`); wrapped in space-to-depth patching when model.patch_size or
  model.temporal_patch_size > 1.

  Two optional switches, absent from the shipped configs (`vidgen convert` writes them): model.unconditional
  True builds the reference's unconditional U-Net (no cond, no text path; prompts only set the batch) and
  model.resnet_groups N its pre-0.7.0 GroupNorm(N) blocks.
  """
  m = config.model
  pt = m.get("temporal_patch_size", 1)
  channels = 3 * m.patch_size ** 2 * pt
  uncond = bool(m.get("unconditional", False))
  text_dim = None if uncond else text_dim
  if m.get("kind", "unet") == "dit":
    net = VideoDiT(dim=m.dim, depth=m.depth, heads=m.attn_heads, dim_head=m.attn_dim_head, channels=channels,
                   cond_dim=text_dim, text_token_dim=text_dim if (text_dim and m.cross_attention) else None,
                   cross_attention=m.cross_attention, dtype=state_lib.compute_dtype(config), remat=m.remat)
  else:
    net = Unet3D(
        dim=m.dim, cond_dim=text_dim, dim_mults=tuple(m.dim_mults), channels=channels,
        attn_heads=m.attn_heads, attn_dim_head=m.attn_dim_head, init_kernel_size=m.init_kernel_size,
        use_sparse_linear_attn=m.use_sparse_linear_attn,
        text_token_dim=text_dim if (text_dim and (m.cross_attention or m.get("text_cond_mlp"))) else None,
        cross_attention=m.cross_attention, text_cond_mlp=(text_dim and m.get("text_cond_mlp")) or None,
        dtype=state_lib.compute_dtype(config), remat=m.remat,
        max_frames_embedding=m.get("max_frames_embedding") or None,
        frame_cond_mlp=(text_dim and m.get("frame_cond_mlp")) or None,
        position_features=m.get("position_features", 0), temporal_conv=m.get("temporal_conv", 0),
        resnet_groups=m.get("resnet_groups") or None, space_time_attention=m.get("space_time_attention", "none"),
        input_skip=bool(m.get("input_skip", False)))
  net = Unconditional(net) if uncond else net
  return net if m.patch_size == pt == 1 else patched.Patched(net, m.patch_size, pt)


def build_schedule(config) -> schedules.Schedule:
  return schedules.make_schedule(config.diffusion.timesteps, kind=config.diffusion.schedule,
                                 shift=config.diffusion.get("schedule_shift", 1.0))


def dummy_batch(config, text_dim: int, batch: int = 1) -> dict:
  d = config.data
  return {
      "video": jnp.zeros((batch, d.num_frames, d.image_size, d.image_size, 3), jnp.uint8),
      "text_tokens": jnp.zeros((batch, config.text.max_length, text_dim), jnp.float32),
      "text_mask": jnp.ones((batch, config.text.max_length), bool),
  }


def init_variables(model: Unet3D, config, text_dim: int, rng):
  """Boxed (logically partitioned) variables; meant to run under jit with sharded outputs."""
  b = dummy_batch(config, text_dim)
  x = b["video"].astype(jnp.float32)
  return model.init(rng, x, jnp.zeros((1,), jnp.int32), pooled(b), **text_inputs(model, b["text_tokens"],
                                                                                b["text_mask"]))


def text_inputs(model, tokens, mask) -> dict:
  """The token keyword arguments for `model`: none when it has no token path (the reference's pooled-only
  FiLM conditioning), so a model without `text_token_dim` is never handed tokens it would reject."""
  inner = model
  while not isinstance(inner, (Unet3D, VideoDiT)) and hasattr(inner, "inner"):
    inner = inner.inner
  if isinstance(inner, (Unet3D, VideoDiT)) and inner.text_token_dim is None:
    return {}
  return {"text_tokens": tokens, "text_mask": mask}


def pooled(batch):
  """Masked mean of the text tokens over L: (B, [T,] L, D) -> (B, [T,] D)."""
  mask = batch["text_mask"].astype(jnp.float32)[..., None]
  return (batch["text_tokens"] * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1.0)


def to_model_space(video_uint8):
  return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def append_images(batch, num_images: int, rng):
  """Joint image+video training (Ho et al. 2022, sec. 3): K = num_images independent images per video.

  Image j of sample i is a random frame of video (i + 1 + j) mod B, appended after the T video frames with
  that video's caption, so the batch becomes: video (B, T+K, H, W, 3), per-frame text_tokens (B, T+K, L, D)
  and text_mask (B, T+K, L), and frame_groups (B, T+K) int32 (0 for the video, 1..K for the images) with
  which the U-Net keeps every image out of every other frame's temporal attention. The other videos are
  reached with `jnp.roll` over the batch axis (a collective permute when the batch is sharded). Needs
  K < B; K = 0 returns the batch unchanged.
  """
  if num_images == 0:
    return batch
  video, tokens, mask = batch["video"], batch["text_tokens"], batch["text_mask"]
  b, t = video.shape[:2]
  if num_images >= b:
    raise ValueError(f"{num_images} images per video need a batch larger than {num_images}, got {b}")
  frame = jax.random.randint(rng, (b, num_images), 0, t)
  images, image_tokens, image_mask = [], [], []
  for j in range(num_images):
    src_video, src_tokens, src_mask = (jnp.roll(a, -(j + 1), axis=0) for a in (video, tokens, mask))
    images.append(jnp.take_along_axis(src_video, frame[:, j].reshape(b, 1, 1, 1, 1), axis=1))
    image_tokens.append(src_tokens[:, None])
    image_mask.append(src_mask[:, None])
  per_frame = lambda a: jnp.broadcast_to(a[:, None], (b, t) + a.shape[1:])
  groups = jnp.concatenate([jnp.zeros((t,), jnp.int32), jnp.arange(1, num_images + 1, dtype=jnp.int32)])
  return {
      "video": jnp.concatenate([video] + images, axis=1),
      "text_tokens": jnp.concatenate([per_frame(tokens)] + image_tokens, axis=1),
      "text_mask": jnp.concatenate([per_frame(mask)] + image_mask, axis=1),
      "frame_groups": jnp.broadcast_to(groups, (b, t + num_images)),
  }


def loss_fn(params, model: Unet3D, sched, diffusion_cfg, batch, rng, num_images: int = 0):
  """Per-batch mean diffusion loss; condition dropout and focus-present masks drawn here, not in the model.

  num_images > 0 trains jointly on videos and images (`append_images`); condition dropout is then drawn
  per group (the video and each image independently), the timestep per sample. diffusion.frame_noise_prob
  > 0 gives that fraction of the samples one independent timestep per frame (`losses.frame_timesteps`);
  diffusion.clean_prefix_prob > 0 that fraction clean first frames and one level for the others, as video
  prediction by 'clean' hands them (`losses.clean_prefix_lengths`). A batch with 'turn_frame' (B,) (the
  data's reversal clips, data.reversal_prob) gives each sample's frames before its turn frame at level 0
  and the rest at its t: they are context, not the caption's motion. Frames given clean either way are
  conditioning, not targets, and stay out of the loss (`losses.known_prefix_mask`): under an SNR weighting
  (loss_snr_clip) their level-0 weight would otherwise dominate it.
  diffusion.t_range (lo, hi) trains on the noise levels t/T in [lo, hi) only (an expert, `diffusion.experts`).
  diffusion.temporal_loss_weight λ > 0 adds λ times the error's deviation from its per-clip frame mean
  (`losses.temporal_deviation_loss`, over the video frames only). diffusion.loss_snr_clip (lo, hi) weighs
  each sample's (or frame's) loss by clip(SNR, lo, hi) in units of the clean video's squared error
  (`losses.snr_loss_weights`); the temporal term stays unweighted.
  """
  k_t, k_noise, k_null, k_focus, k_images = jax.random.split(rng, 5)
  k_frame_t = jax.random.fold_in(k_t, 1)
  turn_frame = batch.get("turn_frame")
  batch = append_images(batch, num_images, k_images)
  x0 = to_model_space(batch["video"])
  b, frames = x0.shape[:2]
  t_range = losses.config_t_range(diffusion_cfg)
  t = losses.sample_timesteps(k_t, b, sched.num_timesteps, diffusion_cfg.get("high_noise_prob", 0.0),
                              diffusion_cfg.get("high_noise_from", 0.8), t_range)
  frame_noise_prob = diffusion_cfg.get("frame_noise_prob", 0.0)
  clean_prefix_prob = diffusion_cfg.get("clean_prefix_prob", 0.0)
  context = None   # (B, frames) True on the frames given clean as context
  if frame_noise_prob or clean_prefix_prob or turn_frame is not None:
    frame_t = losses.frame_timesteps(k_frame_t, t, frames, sched.num_timesteps, frame_noise_prob, t_range)
    known = losses.clean_prefix_lengths(jax.random.fold_in(k_t, 2), b, clean_prefix_prob, frames - num_images)
    if turn_frame is not None:
      known = jnp.where(turn_frame > 0, turn_frame, known)
    t = losses.known_prefix_timesteps(t, frame_t, known, frames - num_images)
    if clean_prefix_prob or turn_frame is not None:
      context = losses.known_prefix_mask(known, frames)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  x_t = gaussian.q_sample(sched, x0, t, noise)
  target = losses.training_target(sched, x0, t, noise, diffusion_cfg.prediction)
  groups = batch.get("frame_groups")
  if groups is None:
    null = jax.random.bernoulli(k_null, diffusion_cfg.cfg_drop_prob, (b,))
  else:
    null = jnp.take_along_axis(jax.random.bernoulli(k_null, diffusion_cfg.cfg_drop_prob, (b, num_images + 1)),
                               groups, axis=1)
  focus = jax.random.bernoulli(k_focus, diffusion_cfg.prob_focus_present, (b,))
  extra = {} if groups is None else {"frame_groups": groups}
  pred = model.apply(params, x_t, t, pooled(batch), null_cond=null, focus_present_mask=focus,
                     **text_inputs(model, batch["text_tokens"], batch["text_mask"]), **extra)
  weights = losses.snr_loss_weights(sched, t, diffusion_cfg.prediction, diffusion_cfg.get("loss_snr_clip", ()))
  if context is not None:
    weights = jnp.where(context, 0.0, 1.0 if weights is None else weights)
  per_sample = losses.diffusion_loss(pred.astype(jnp.float32), target, diffusion_cfg.loss, weights)
  temporal_weight = diffusion_cfg.get("temporal_loss_weight", 0.0)
  if temporal_weight:
    video_frames = None if groups is None else groups == 0
    if context is not None:
      video_frames = ~context if video_frames is None else video_frames & ~context
    per_sample = per_sample + temporal_weight * losses.temporal_deviation_loss(
        pred, target, diffusion_cfg.loss, frame_mask=video_frames)
  return per_sample.mean()


def _microbatches(batch, n):
  """(B, ...) -> (n, B/n, ...), microbatch i = examples i, i+n, ... so the batch sharding is kept."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1), batch)


def train_step(state: state_lib.TrainState, batch, *, model, tx, sched, config):
  """One optimizer step (with `config.train.grad_accum` scanned micro-batches), EMA included."""
  rng = state.step_key()
  accum = config.train.grad_accum
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, num_images=config.train.get("joint_images", 0)))
  if accum == 1:
    loss, grads = grad_fn(state.params, model, sched, config.diffusion, batch, rng)
  else:
    def body(carry, xs):
      micro, i = xs
      l, g = grad_fn(state.params, model, sched, config.diffusion, micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (l, g)), None
    zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
    (loss, grads), _ = jax.lax.scan(body, zero, (_microbatches(batch, accum), jnp.arange(accum)))
    loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = state_lib.apply_update(state, grads, tx, config.optim.ema_decay, ok)
  metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(new_state.params),
             "finite": ok}
  return new_state, metrics


def guided_denoiser(params, text_tokens, text_mask, *, model, sched, prediction, cond_scale, low_noise=None):
  """(model_fn(x_t, t) -> raw output, its parametrisation): the classifier-free-guided model for these prompts.

  With `low_noise` (an `experts.LowNoiseExpert`; `params` is then the pair (this model's, the expert's)) the
  function is the expert split's x̂0 predictor, and the parametrisation 'x0'; the expert's steps are guided
  with its own cond_scale where it has one."""
  cond = pooled({"text_tokens": text_tokens, "text_mask": text_mask})

  def guided_fn(params, model, cond_scale=cond_scale):
    def apply_fn(x, t, null, cond, tokens, mask):
      return model.apply(params, x, t, cond, null_cond=null,
                         **text_inputs(model, tokens, mask)).astype(jnp.float32)
    guided = guidance.make_guided_fn(apply_fn, cond_scale)
    return lambda x, t: guided(x, t, cond, text_tokens, text_mask)

  if low_noise is None:
    return guided_fn(params, model), prediction
  high_params, low_params = params
  return experts.switch_x0_fn(
      conditioning.model_x0_fn(guided_fn(high_params, model), sched, prediction),
      conditioning.model_x0_fn(guided_fn(low_params, low_noise.model, cond_scale if low_noise.cond_scale is None
                                         else low_noise.cond_scale), sched, low_noise.prediction),
      low_noise.switch_t), "x0"


def sample(params, rng, text_tokens, text_mask, *, model, sched, config, num_frames=None, image_size=None,
           sampler=None, steps=None, cond_scale=None, frame_offset=None, observation=None,
           method="reconstruction", guidance_weight=1.0, low_noise=None):
  """Generates videos in [-1, 1], one per row of text_tokens, with classifier-free guidance.

  `observation` (a `conditioning.Observation`: known frames or a low-resolution video, in [-1, 1]) makes it
  a conditional sampler: `method` 'replacement' or 'reconstruction' (guidance weight `guidance_weight`).
  `low_noise` (an `experts.LowNoiseExpert`) splits the steps between two models by noise level: `params`
  is then the pair (this model's, the expert's), and the expert denoises the steps below its switch.
  Unset sampler, steps, cond_scale and frame_offset (pyramid sampling) come from config.sample.
  """
  s, d = config.sample, config.data
  sampler = sampler or s.sampler
  steps = steps or s.steps
  cond_scale = s.cond_scale if cond_scale is None else cond_scale
  b = text_tokens.shape[0]
  shape = (b, num_frames or d.num_frames, image_size or d.image_size, image_size or d.image_size, 3)
  model_fn, prediction = guided_denoiser(params, text_tokens, text_mask, model=model, sched=sched,
                                         prediction=config.diffusion.prediction, cond_scale=cond_scale,
                                         low_noise=low_noise)
  common = dict(prediction=prediction, clip_denoised=s.clip_denoised)
  if observation is not None:
    rng, cond_rng = jax.random.split(rng)
    model_fn = conditioning.conditioned_x0_fn(
        conditioning.model_x0_fn(model_fn, sched, prediction), sched, observation,
        method=method, weight=guidance_weight, rng=cond_rng)
    common["prediction"] = "x0"
  frame_offset = s.get("frame_offset", 0) if frame_offset is None else frame_offset
  if frame_offset and (sampler != "ddim" or observation is not None):
    raise ValueError(f"sample.frame_offset={frame_offset} (pyramid sampling) needs sampler ddim and no "
                     f"conditioning observation, got sampler {sampler!r}"
                     + (" with an observation" if observation is not None else ""))
  if sampler == "ddim":
    return samplers.ddim_sample(model_fn, sched, shape, rng, num_steps=steps, eta=s.eta,
                                frame_offset=frame_offset, **common)
  if sampler == "ddpm":
    return samplers.ddpm_sample(model_fn, sched, shape, rng, **common)
  if sampler == "dpmpp2m":
    return samplers.dpmpp_2m_sample(model_fn, sched, shape, rng, num_steps=steps, **common)
  raise ValueError(f"sampler {sampler!r} unknown; choose ddim, ddpm or dpmpp2m")


def make_sample_fn(model, sched, config, **overrides):
  """A jitted (params, rng, text_tokens, text_mask) -> videos function with static sampler settings."""
  return jax.jit(functools.partial(sample, model=model, sched=sched, config=config, **overrides))

