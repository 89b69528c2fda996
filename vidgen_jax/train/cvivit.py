"""C-ViViT tokenizer training (Phenaki stage 1): the family interface and the one train step.

The train state's params are {'tokenizer': {'params': ... [, 'quantizer_stats': EMA-VQ codebook]},
'discriminator': {'params': ...}}; one optax
`multi_transform` holds the generator's and the discriminator's optimizers, so a single TrainState (and one
checkpoint) carries both. Each step, in one jitted function:

  recon loss   = MSE(recon, video) + quantizer aux loss                     (video in [0, 1])
                 + loss.perceptual_weight * LPIPS-style VGG16 distance on one random frame per clip (the
                 frozen VGG weights from the local file loss.perceptual_weights: a step argument, never
                 trained, never in the checkpoint)
  GAN (from step train.gan_start, weight loss.gan_weight > 0): one random frame per video,
  generator    = hinge generator loss on D(recon frame), weighted by VQGAN's adaptive weight
                 ‖∇recon‖/‖∇gan‖ at the decoder's output kernel (two backward passes, added by linearity)
  discriminator= hinge(D(real), D(stop_grad(recon))) + gradient penalty on the real frames

Images first: train.image_steps = N trains the first N steps on single frames (1-frame videos), then clips.

Monitoring: codebook usage and perplexity of the batch's indices are logged every log_every steps
(codebook collapse is this family's known failure); FSQ has no collapse mode, LFQ fights it with its
entropy loss. The EMA-VQ codebook ('quantizer_stats', beside the params in the state and the checkpoint,
optimizer set_to_zero) is updated by the quantizer's EMA inside the step; codes unused for
train.reseed_dead_codes_after steps are re-seeded with encoder outputs of the batch (`dead_codes` logged).
"""
import functools
import pathlib

import jax
import jax.numpy as jnp
import optax
from flax.core import FrozenDict

from vidgen_jax.layers.quantizers import VQ_COLLECTION, reseed_dead_codes
from vidgen_jax.losses import gan, perceptual
from vidgen_jax.models.cvivit import CViViT
from vidgen_jax.models.discriminator import FrameDiscriminator
from vidgen_jax.train import state as state_lib

NEEDS_TEXT = False
BATCH_NDIMS = {"video": 5}


def build_model(config) -> CViViT:
  m = config.model
  return CViViT(dim=m.dim, image_size=config.data.image_size, patch_size=m.patch_size,
                temporal_patch_size=m.temporal_patch_size, spatial_depth=m.spatial_depth,
                temporal_depth=m.temporal_depth, heads=m.heads, dim_head=m.dim_head, quantizer=m.quantizer,
                codebook_size=m.codebook_size, fsq_levels=tuple(m.fsq_levels),
                reference_compat=bool(m.get("reference_compat", False)),
                dtype=state_lib.compute_dtype(config),
                quantizer_kwargs=(FrozenDict(reference_entropy=True)
                                  if m.quantizer == "lfq" and m.get("lfq_reference_entropy", False) else None))


def validate(config, num_devices: int, num_processes: int = 1):
  from vidgen_jax.train.validation import ConfigError, dtype_problems
  p, m, d = [], config.model, config.data
  if m.quantizer not in ("lfq", "fsq", "vq"):
    p.append(f"model.quantizer={m.quantizer!r}: choose lfq, fsq or vq")
  if config.train.get("reseed_dead_codes_after", 0) < 0:
    p.append(f"train.reseed_dead_codes_after={config.train.reseed_dead_codes_after}: must be >= 0 (0 = never)")
  if m.quantizer == "lfq" and (m.codebook_size < 2 or m.codebook_size & (m.codebook_size - 1)):
    p.append(f"model.codebook_size={m.codebook_size}: LFQ needs a power of 2")
  if (d.num_frames - 1) % m.temporal_patch_size:
    p.append(f"data.num_frames={d.num_frames}: C-ViViT needs 1 + k * model.temporal_patch_size frames")
  lc = config.loss
  if lc.get("perceptual_weight", 0) > 0:
    path = lc.get("perceptual_weights", "")
    if not path:
      p.append("loss.perceptual_weight > 0 needs loss.perceptual_weights: a local .npz/.safetensors file of "
               "torchvision VGG16 `features.*` weights (nothing is downloaded)")
    elif not pathlib.Path(path).is_file():
      p.append(f"loss.perceptual_weights={path!r}: no such file")
    if d.image_size < perceptual.min_image_side():
      p.append(f"data.image_size={d.image_size}: the perceptual loss's VGG16 taps need frames of at least "
               f"{perceptual.min_image_side()} pixels")
  if config.train.get("image_steps", 0) < 0:
    p.append(f"train.image_steps={config.train.image_steps}: must be >= 0")
  if d.image_size % m.patch_size:
    p.append(f"data.image_size={d.image_size} must be divisible by model.patch_size={m.patch_size}")
  if config.train.batch_size % max(num_devices, 1) and config.mesh.data == -1:
    p.append(f"train.batch_size={config.train.batch_size} must be divisible by the {num_devices} devices")
  p += dtype_problems(config)
  if p:
    raise ConfigError(p)
  return config


def make_optimizer(config):
  tx_g, lr_fn = state_lib.make_optimizer(config.optim, config.train.num_steps)
  tx_d, _ = state_lib.make_optimizer(config.optim, config.train.num_steps)
  # The EMA-VQ codebook statistics live beside the params (one checkpointed tree) but are not trained by
  # gradients: the step writes them.
  labels = lambda params: {"tokenizer": {k: jax.tree.map(lambda _: "stats" if k == VQ_COLLECTION else "g", v)
                                         for k, v in params["tokenizer"].items()},
                           "discriminator": jax.tree.map(lambda _: "d", params["discriminator"])}
  transforms = {"g": tx_g, "d": tx_d}
  if config.model.quantizer == "vq":   # only then: lfq/fsq optimizer states keep their (checkpointed) layout
    transforms["stats"] = optax.set_to_zero()
  return optax.multi_transform(transforms, labels), lr_fn


def build_components(config, text_encoder=None) -> dict:
  disc = FrameDiscriminator(config.loss.disc_base_dim,
                            attn_resolutions=tuple(config.loss.get("disc_attn_resolutions", (16,))))
  parts = {"model": build_model(config), "discriminator": disc, "optimizer": make_optimizer(config)}
  if config.loss.get("perceptual_weight", 0) > 0:
    parts["vgg"] = perceptual.load_vgg16_params(config.loss.perceptual_weights)
  return parts


def make_state_fn(run):
  d = run.config.data

  def fn(key):
    k_tok, k_disc, k_train = jax.random.split(key, 3)
    video = jnp.zeros((1, d.num_frames, d.image_size, d.image_size, 3), jnp.float32)
    params = {"tokenizer": run.model.init(k_tok, video),
              "discriminator": run.parts["discriminator"].init(k_disc, video[:, 0])}
    return state_lib.create_state(params, run.tx, k_train)
  return fn


def step_constants(run):
  """The frozen VGG16 variables of the perceptual loss (None without it): a step argument, not state."""
  return run.parts.get("vgg")


def step_fn(run):
  return functools.partial(train_step, model=run.model, disc=run.parts["discriminator"], tx=run.tx,
                           config=run.config)


def host_batch(run, batch: dict) -> dict:
  return batch


def to_unit(video_uint8):
  return video_uint8.astype(jnp.float32) / 255.0


def random_frames(rng, video):
  """One random frame of each clip: (B, T, H, W, C) -> (B, H, W, C)."""
  b, t = video.shape[:2]
  idx = jax.random.randint(rng, (b,), 0, t)
  return jnp.take_along_axis(video, idx.reshape(b, 1, 1, 1, 1), axis=1)[:, 0]


def train_step(state, batch, vgg=None, *, model, disc, tx, config):
  """One update. With train.image_steps = N > 0 the first N steps train on images (one random frame of each
  clip, as a 1-frame video: the first-frame patch path) and the rest on the clips; a `lax.cond` on the step
  picks the branch, so one compiled step serves both phases and resuming keeps the phase."""
  video = to_unit(batch["video"])
  image_steps = config.train.get("image_steps", 0)
  if image_steps <= 0:
    return _update(state, video, vgg, model=model, disc=disc, tx=tx, config=config)
  images = random_frames(jax.random.fold_in(state.step_key(), 1), video)[:, None]
  return jax.lax.cond(state.step < image_steps,
                      lambda: _update(state, images, vgg, model=model, disc=disc, tx=tx, config=config),
                      lambda: _update(state, video, vgg, model=model, disc=disc, tx=tx, config=config))


def _forward(model, variables, video):
  """(recon, indices, aux, pre-quantization tokens, updated VQ stats or None) in training mode."""
  z = model.apply(variables, video, deterministic=False, method=CViViT.encode_continuous)
  if model.quantizer == "vq":   # the EMA codebook update: a mutable collection, not a gradient
    (q, indices, aux), upd = model.apply(variables, z, train=True, method=CViViT.quantize, mutable=[VQ_COLLECTION])
    stats = upd[VQ_COLLECTION]
  else:
    (q, indices, aux), stats = model.apply(variables, z, train=True, method=CViViT.quantize), None
  return model.apply(variables, q, deterministic=False, method=CViViT.decode), indices, aux, z, stats


def _update(state, video, vgg, *, model, disc, tx, config):
  k_frame, k_reseed = jax.random.split(state.step_key())
  tok, dvars = state.params["tokenizer"], state.params["discriminator"]
  lc = config.loss
  gan_on = (lc.gan_weight > 0) & (state.step >= config.train.gan_start)
  real = random_frames(k_frame, video)
  with_params = lambda p: {**tok, "params": p}    # gradients only for 'params', never the VQ statistics

  def recon_loss(p):
    recon, indices, aux, z, stats = _forward(model, with_params(p), video)
    mse = jnp.mean(jnp.square(recon - video))
    total = mse + aux["loss"]
    percept = jnp.zeros(())
    if vgg is not None:   # on the same random frame per clip as the GAN: VGG on every frame would dominate
      percept = perceptual.perceptual_loss(vgg, random_frames(k_frame, recon), real)
      total = total + lc.perceptual_weight * percept
    return total, (recon, indices, aux, mse, percept, z, stats)

  def gen_loss(p):
    recon = _forward(model, with_params(p), video)[0]
    return gan.hinge_generator_loss(disc.apply(dvars, random_frames(k_frame, recon)))

  (rec_total, (recon, indices, aux, mse, percept, z, stats)), g_rec = jax.value_and_grad(
      recon_loss, has_aux=True)(tok["params"])
  if lc.gan_weight > 0:   # static: without GAN neither the discriminator nor the second backward pass runs
    g_gan = jax.grad(gen_loss)(tok["params"])
    last = lambda g: g["to_pixels"]["kernel"]
    weight = jnp.where(gan_on, lc.gan_weight * gan.adaptive_weight(last(g_rec), last(g_gan)), 0.0)
    g_tok = jax.tree.map(lambda a, b: a + weight * b, g_rec, g_gan)
    fake = jax.lax.stop_gradient(random_frames(k_frame, recon))

    def disc_loss(dvars):
      d_fn = lambda x: disc.apply(dvars, x)
      return (gan.hinge_discriminator_loss(d_fn(real), d_fn(fake))
              + gan.gradient_penalty(d_fn, real, lc.gp_weight))

    d_loss, g_d = jax.value_and_grad(disc_loss)(dvars)
    g_d = jax.tree.map(lambda g: jnp.where(gan_on, g, 0.0), g_d)
  else:
    weight, g_tok, d_loss = jnp.zeros(()), g_rec, jnp.zeros(())
    g_d = jax.tree.map(jnp.zeros_like, dvars)
  g_tok = {k: (g_tok if k == "params" else jax.tree.map(jnp.zeros_like, v)) for k, v in tok.items()}
  grads = {"tokenizer": g_tok, "discriminator": g_d}
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(rec_total) & jnp.isfinite(grad_norm)
  new_state = state_lib.apply_update(state, grads, tx, config.optim.ema_decay, ok)
  if not lc.gan_weight > 0:
    new_state = _keep_discriminator(state, new_state)
  extra = {}
  if stats is not None:
    new_state, extra = _store_vq_stats(state, new_state, stats, z, ok, k_reseed, config)
  psnr = -10.0 * jnp.log10(jnp.maximum(jnp.mean(jnp.square(jnp.clip(recon, 0, 1) - video)), 1e-10))
  metrics = {"loss": rec_total, "recon_mse": mse, "psnr": psnr, "quantizer_loss": aux["loss"],
             "perceptual_loss": percept, "codebook_usage": aux["usage"], "perplexity": aux["perplexity"],
             "disc_loss": d_loss, "gan_weight": weight, "grad_norm": grad_norm, "finite": ok,
             "frames": jnp.asarray(video.shape[1], jnp.float32), **extra}
  return new_state, metrics


def _keep_discriminator(state, new_state):
  """new_state with the discriminator's params, EMA and optimizer state as in `state`.

  Without GAN (static) the discriminator never trains; its subtrees stay in the state so that checkpoints
  keep one layout whatever the loss weights, but its AdamW (which would still decay the weights) and EMA
  are not computed: their outputs are unused, so XLA drops them. CViViT-S: the discriminator (7.8M) is
  larger than the tokenizer (1.6M); bytes accessed per step 3.29 -> 2.67 GB, time on a 2-core CPU
  unchanged (0.99-1.01x side by side), a gain where the optimizer is memory-bound (accelerators)."""
  keep = lambda new, old: {**new, "discriminator": old["discriminator"]}
  opt = new_state.opt_state
  inner = {**opt.inner_states, "d": state.opt_state.inner_states["d"]}
  return new_state.replace(params=keep(new_state.params, state.params),
                           ema_params=keep(new_state.ema_params, state.ema_params),
                           opt_state=opt._replace(inner_states=inner))


def _store_vq_stats(state, new_state, stats, z, ok, rng, config):
  """Writes the step's EMA codebook (re-seeding codes unused for train.reseed_dead_codes_after steps with
  encoder outputs of this batch) into params and EMA params alike: the codebook has no separate average."""
  after = config.train.get("reseed_dead_codes_after", 0)
  vq = stats["vq"]
  dead = jnp.sum(vq["unused_steps"] > after) if after > 0 else jnp.zeros((), jnp.int32)
  if after > 0:
    vq = reseed_dead_codes(vq, jax.lax.stop_gradient(z), rng, after)
  old = state.params["tokenizer"][VQ_COLLECTION]
  stats = jax.tree.map(lambda n, o: jnp.where(ok, n, o), {"vq": vq}, old)
  put = lambda tree: {**tree, "tokenizer": {**tree["tokenizer"], VQ_COLLECTION: stats}}
  return (new_state.replace(params=put(new_state.params), ema_params=put(new_state.ema_params)),
          {"dead_codes": dead.astype(jnp.float32)})
