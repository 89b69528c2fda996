"""Phenaki stage 2: MaskGIT (and optionally a Token-Critic) over a trained C-ViViT's tokens, conditioned on text.

config.tokenizer.workdir names a trained C-ViViT workdir. Its EMA parameters are copied into this run's
state as a frozen subtree (params['tokenizer'], optimizer set_to_zero), so a Phenaki workdir is
self-contained: checkpoints carry the tokenizer they were trained with and sampling needs nothing else.

One train step: videos -> token indices (frozen tokenizer, no gradient) -> a cosine-schedule mask per
sample -> MaskGIT logits with the text as cross-attention context (condition dropout: the sample sees only
the learned null key/values) -> cross-entropy on masked tokens. With model.critic, a Token-Critic is
trained in the same step on the generator's samples at the masked positions, labelled fake only where the
sampled token differs from the real one.

Images first, then video (Phenaki trains on images and videos): train.image_steps = N trains the first N
steps on single frames with their captions, then on clips.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from vidgen_jax.maskgit import losses as mg_losses
from vidgen_jax.maskgit import schedule as mg_schedule
from vidgen_jax.models.cvivit import CViViT
from vidgen_jax.train.cvivit import random_frames
from vidgen_jax.models.maskgit import MaskGit, TokenCritic
from vidgen_jax.train import state as state_lib

NEEDS_TEXT = True
BATCH_NDIMS = {"video": 5, "text_tokens": 3, "text_mask": 2}


def load_tokenizer(workdir):
  """(C-ViViT module, its config, EMA variables) of a trained tokenizer workdir."""
  from vidgen_jax.sample.phenaki import TokenizerReconstructor
  rec = TokenizerReconstructor.from_workdir(workdir)
  return rec.run.model, rec.config, rec.params["tokenizer"]


def token_grid(tokenizer: CViViT, num_frames: int, image_size: int) -> tuple:
  return (tokenizer.num_token_steps(num_frames), image_size // tokenizer.patch_size,
          image_size // tokenizer.patch_size)


def validate(config, num_devices: int, num_processes: int = 1):
  from vidgen_jax.train.validation import ConfigError, dtype_problems
  p = []
  if not config.tokenizer.workdir:
    p.append("tokenizer.workdir is empty: train a C-ViViT first (configs/cvivit_shapes.py) and give its workdir")
  if config.train.get("image_steps", 0) < 0:
    p.append(f"train.image_steps={config.train.image_steps}: must be >= 0")
  if not 0 <= config.train.cfg_drop_prob <= 1:
    p.append(f"train.cfg_drop_prob={config.train.cfg_drop_prob}: must be in [0, 1]")
  if config.train.batch_size % max(num_devices, 1) and config.mesh.data == -1:
    p.append(f"train.batch_size={config.train.batch_size} must be divisible by the {num_devices} devices")
  p += dtype_problems(config)
  if p:
    raise ConfigError(p)
  return config


def build_components(config, text_encoder) -> dict:
  tokenizer, tok_config, tok_vars = load_tokenizer(config.tokenizer.workdir)
  if tok_config.data.image_size != config.data.image_size or tok_config.data.num_frames != config.data.num_frames:
    raise ValueError(f"data (image {config.data.image_size}, {config.data.num_frames} frames) must match the "
                     f"tokenizer's (image {tok_config.data.image_size}, {tok_config.data.num_frames} frames)")
  grid = token_grid(tokenizer, config.data.num_frames, config.data.image_size)
  m = config.model
  vocab = int(tokenizer.codebook_size if tokenizer.quantizer != "fsq" else
              functools.reduce(lambda a, b: a * b, tokenizer.fsq_levels))
  seq = grid[0] * grid[1] * grid[2]
  compat = bool(m.get("reference_compat", False))   # converted phenaki-pytorch weights (vidgen convert)
  dtype = state_lib.compute_dtype(config)
  maskgit = MaskGit(num_tokens=vocab, dim=m.dim, depth=m.depth, max_seq_len=seq, heads=m.heads, dim_head=m.dim_head,
                    reference_compat=compat, dtype=dtype)
  critic = TokenCritic(num_tokens=vocab, dim=m.dim, depth=m.critic_depth, max_seq_len=seq, heads=m.heads,
                       dim_head=m.dim_head, reference_compat=compat, dtype=dtype) if m.critic else None
  tx_train, lr_fn = state_lib.make_optimizer(config.optim, config.train.num_steps)
  labels = lambda params: {k: jax.tree.map(lambda _: "frozen" if k == "tokenizer" else "train", v)
                           for k, v in params.items()}
  tx = optax.multi_transform({"train": tx_train, "frozen": optax.set_to_zero()}, labels)
  return {"model": maskgit, "critic": critic, "tokenizer": tokenizer, "tokenizer_variables": tok_vars,
          "grid": grid, "text_dim": text_encoder.dim, "optimizer": (tx, lr_fn)}


def make_state_fn(run):
  grid, L = run.parts["grid"], run.config.text.max_length

  def fn(key):
    k_mg, k_critic, k_train = jax.random.split(key, 3)
    n = grid[0] * grid[1] * grid[2]
    tokens = jnp.zeros((1, n), jnp.int32)
    text = jnp.zeros((1, L, run.parts["text_dim"]), jnp.float32)
    params = {"maskgit": run.model.init(k_mg, tokens, text, video_shape=grid),
              "tokenizer": jax.tree.map(jnp.asarray, run.parts["tokenizer_variables"])}
    if run.parts["critic"] is not None:
      params["critic"] = run.parts["critic"].init(k_critic, tokens, text, video_shape=grid)
    return state_lib.create_state(params, run.tx, k_train)
  return fn


def step_fn(run):
  return functools.partial(train_step, model=run.model, critic=run.parts["critic"], tokenizer=run.parts["tokenizer"],
                           grid=run.parts["grid"], tx=run.tx, config=run.config)


def host_batch(run, batch: dict) -> dict:
  from vidgen_jax.data import pipeline
  return pipeline.attach_text(batch, run.text_encoder)


def video_to_tokens(tokenizer, tok_vars, video_uint8):
  """(B, N) int32 token indices of uint8 videos, row-major over the (t, h, w) grid; no gradient."""
  _, indices, _ = tokenizer.apply(tok_vars, video_uint8.astype(jnp.float32) / 255.0, method=CViViT.encode)
  return jax.lax.stop_gradient(indices.reshape(indices.shape[0], -1))


def train_step(state, batch, *, model, critic, tokenizer, grid, tx, config):
  """One update. With train.image_steps = N > 0 the first N steps train on images: one random frame of each
  clip, tokenized as a 1-frame video (its h x w tokens are the first token step of a clip, same positions),
  with the clip's caption; then on whole clips. A `lax.cond` on the step picks the branch."""
  kw = dict(model=model, critic=critic, tokenizer=tokenizer, tx=tx, config=config)
  video = batch["video"]
  image_steps = config.train.get("image_steps", 0)
  if image_steps <= 0:
    return _update(state, batch, video, grid, **kw)
  images = random_frames(jax.random.fold_in(state.step_key(), 1), video)[:, None]
  return jax.lax.cond(state.step < image_steps,
                      lambda: _update(state, batch, images, (1,) + tuple(grid[1:]), **kw),
                      lambda: _update(state, batch, video, grid, **kw))


def _update(state, batch, video, grid, *, model, critic, tokenizer, tx, config):
  rng = state.step_key()
  k_mask, k_drop, k_critic_mask, k_sample = jax.random.split(rng, 4)
  tokens = video_to_tokens(tokenizer, state.params["tokenizer"], video)
  b, n = tokens.shape
  mask = mg_schedule.sample_train_mask(k_mask, b, n, config.train.mask_schedule)
  null = mg_losses.cfg_drop(k_drop, b, config.train.cfg_drop_prob)
  text, text_mask = batch["text_tokens"], batch["text_mask"]
  inputs = jnp.where(mask, model.mask_id, tokens)

  def mg_loss(p):
    logits = model.apply(p, inputs, text, text_mask, null, video_shape=grid)
    loss, stats = mg_losses.masked_token_loss(logits, tokens, mask)
    return loss, stats

  (loss, stats), g_mg = jax.value_and_grad(mg_loss, has_aux=True)(state.params["maskgit"])
  grads = {"maskgit": g_mg, "tokenizer": jax.tree.map(jnp.zeros_like, state.params["tokenizer"])}
  metrics = dict(stats)
  if critic is not None:
    c_mask = mg_schedule.sample_train_mask(k_critic_mask, b, n, config.train.mask_schedule)
    gen_logits = model.apply(state.params["maskgit"], jnp.where(c_mask, model.mask_id, tokens), text, text_mask,
                             null, video_shape=grid)
    c_inputs, labels = mg_losses.critic_inputs_and_labels(k_sample, tokens, c_mask, gen_logits)

    def c_loss(p):
      return mg_losses.critic_loss(critic.apply(p, c_inputs, text, text_mask, null, video_shape=grid), labels)

    closs, g_c = jax.value_and_grad(c_loss)(state.params["critic"])
    grads["critic"] = g_c
    metrics["critic_loss"] = closs
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = state_lib.apply_update(state, grads, tx, config.optim.ema_decay, ok)
  # Bit-exact freeze: the EMA's d*p + (1-d)*p would round the tokenizer's weights.
  new_state = new_state.replace(params={**new_state.params, "tokenizer": state.params["tokenizer"]},
                                ema_params={**new_state.ema_params, "tokenizer": state.ema_params["tokenizer"]})
  metrics.update(loss=loss, grad_norm=grad_norm, finite=ok, token_steps=jnp.asarray(grid[0], jnp.float32))
  return new_state, metrics
