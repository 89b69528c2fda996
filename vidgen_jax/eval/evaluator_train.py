"""Training recipe of the shapes evaluator (`vidgen evaluator train`): procedural clips only, deterministic.

Batch i holds examples [i*B, (i+1)*B) of MovingShapes(split='all', seed=TRAIN_SEED): every combination,
held-out ones included (the evaluator is a measuring instrument, not a generator; the generators never see
the held-out combinations). One clip in 13 is frozen (one of its frames repeated) and labelled "static".
Augmentations, drawn per example from (seed, index) so that the run is reproducible: brightness gain
0.55-1, a 3x3 blur mixed in with weight 0-0.5, Gaussian pixel noise with std 0-0.08 (of the [0, 1] range), so
that dim, soft or noisy generated clips are still read by what they show.

Held-out accuracy is measured on clips from a different seed (TEST_SEED), on all combinations and on the
held-out combinations separately, and on frozen clips.
"""
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vidgen_jax.data import moving_shapes
from vidgen_jax.eval import evaluator as ev

log = logging.getLogger("vidgen.evaluator")

TRAIN_SEED = 101
TEST_SEED = 202
STATIC_PROB = 1.0 / 13.0
DEFAULTS = dict(steps=3000, batch_size=64, lr=2e-3, width=32, feature_dim=128, seed=0)


def example(source: moving_shapes.MovingShapes, index: int, augment: bool, static_prob: float = STATIC_PROB):
  """(video float32 [-1, 1] (8, 32, 32, 3), labels (3,) int32) of one (possibly frozen, augmented) clip."""
  item = source[index]
  rng = np.random.default_rng([source.seed, 7, index])
  video = item["video"]
  motion = int(item["motion"])
  if rng.random() < static_prob:
    video = np.repeat(video[rng.integers(len(video))][None], len(video), axis=0)
    motion = ev.MOTIONS.index(ev.STATIC)
  x = video.astype(np.float32) / 255.0
  if augment:
    x = x * rng.uniform(0.55, 1.0)
    blur = _box_blur(x)
    x = x + rng.uniform(0.0, 0.5) * (blur - x)
    x = x + rng.normal(0.0, 1.0, x.shape).astype(np.float32) * rng.uniform(0.0, 0.08)
  labels = np.array([item["colour"], item["shape"], motion], np.int32)
  return (np.clip(x, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32), labels


def _box_blur(x):
  """3x3 mean filter over the spatial axes of (T, H, W, C), edges replicated."""
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = x.shape[1:3]
  return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def batch(source, start: int, size: int, augment: bool, static_prob: float = STATIC_PROB):
  xs, ys = zip(*(example(source, start + i, augment, static_prob) for i in range(size)))
  return np.stack(xs), np.stack(ys)


def _loss(params, model, x, y):
  _, logits = model.apply({"params": params}, x)
  losses = [optax.softmax_cross_entropy_with_integer_labels(logits[a], y[:, i]).mean()
            for i, a in enumerate(ev.ATTRIBUTES)]
  return sum(losses), jnp.stack(losses)


def train(steps=DEFAULTS["steps"], batch_size=DEFAULTS["batch_size"], lr=DEFAULTS["lr"],
          width=DEFAULTS["width"], feature_dim=DEFAULTS["feature_dim"], seed=DEFAULTS["seed"],
          log_every: int = 250):
  """Trains the classifier from scratch; returns its params. Same arguments, same params."""
  model = ev.ShapesClassifier(width=width, feature_dim=feature_dim)
  source = moving_shapes.MovingShapes(num_examples=2**31 - 1, image_size=ev.IMAGE_SIZE,
                                      num_frames=ev.NUM_FRAMES, seed=TRAIN_SEED + seed, split="all")
  x0 = jnp.zeros((1, ev.NUM_FRAMES, ev.IMAGE_SIZE, ev.IMAGE_SIZE, 3))
  params = model.init(jax.random.key(seed), x0)["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10 + 1), steps)
  tx = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    (_, parts), grads = jax.value_and_grad(_loss, has_aux=True)(params, model, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, parts

  t0 = time.time()
  for i in range(steps):
    x, y = batch(source, i * batch_size, batch_size, augment=True)
    params, opt_state, parts = step(params, opt_state, x, y)
    if log_every and ((i + 1) % log_every == 0 or i + 1 == steps):
      p = np.asarray(parts)
      log.info("evaluator step %d/%d | loss colour %.4f shape %.4f motion %.4f | %.0f s", i + 1, steps,
               p[0], p[1], p[2], time.time() - t0)
  return params


def accuracy(evaluator: ev.Evaluator, num: int = 1000, split: str = "all", static_prob: float = STATIC_PROB,
             seed: int = TEST_SEED) -> dict:
  """Per-attribute and joint accuracy on `num` real clips of `split` drawn from `seed` (no augmentation)."""
  source = moving_shapes.MovingShapes(num_examples=num, image_size=ev.IMAGE_SIZE, num_frames=ev.NUM_FRAMES,
                                      seed=seed, split=split)
  x, y = batch(source, 0, num, augment=False, static_prob=static_prob)
  _, probs = evaluator._apply(evaluator.params, x)
  right = np.stack([np.asarray(probs[a]).argmax(-1) == y[:, i] for i, a in enumerate(ev.ATTRIBUTES)], 1)
  out = {a: float(right[:, i].mean()) for i, a in enumerate(ev.ATTRIBUTES)}
  out["joint"] = float(right.all(1).mean())
  out["num"] = num
  return out


def report(evaluator: ev.Evaluator, num: int = 2000) -> dict:
  return {
      "all_combinations": accuracy(evaluator, num, "all"),
      "heldout_combinations": accuracy(evaluator, num // 2, "heldout", static_prob=0.0),
      "frozen_clips": accuracy(evaluator, num // 4, "all", static_prob=1.0),
  }


def build(path, **kwargs) -> dict:
  """Trains with DEFAULTS (overridden by kwargs), measures held-out accuracy, writes the weights to `path`."""
  cfg = {**DEFAULTS, **kwargs}
  t0 = time.time()
  params = train(**cfg)
  seconds = time.time() - t0
  evaluator = ev.Evaluator(params, width=cfg["width"], feature_dim=cfg["feature_dim"])
  acc = report(evaluator)
  meta = {"recipe": cfg, "train_seconds": round(seconds, 1), "accuracy": acc, "jax": jax.__version__,
          "train_seed": TRAIN_SEED, "test_seed": TEST_SEED}
  ev.save(path, params, width=cfg["width"], feature_dim=cfg["feature_dim"], meta=meta)
  log.info("evaluator written to %s (%.0f s): %s", path, seconds, acc)
  return meta
