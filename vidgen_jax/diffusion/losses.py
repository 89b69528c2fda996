"""Diffusion training targets, training timesteps and per-sample losses."""
import jax
import jax.numpy as jnp

from vidgen_jax.diffusion import gaussian

LOSS_TYPES = ("l1", "l2")


def config_t_range(diffusion_cfg) -> tuple:
  """A config's diffusion.t_range as a tuple; () (every level) for configs written before it existed."""
  return tuple(diffusion_cfg.get("t_range", ()) or ())


def timestep_window(num_timesteps, t_range=()):
  """[lo, hi) schedule indices of the noise levels t/T in `t_range` = (lo, hi) (() = all: [0, T)).

  A model trained on a window is an expert for those levels only (eDiff-I): `sample_timesteps` and
  `frame_timesteps` draw from it, and `experts` checks that a sampler never asks it for a level outside it.
  The fractions are rounded to indices as `experts.switch_index` rounds the switch, so an expert trained on
  (0, s) covers exactly the steps a split at s gives it."""
  if not t_range:
    return 0, num_timesteps
  if len(t_range) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in t_range):
    raise ValueError(f"t_range must be () or (lo, hi), fractions of the noise levels, got {t_range!r}")
  lo, hi = int(round(float(t_range[0]) * num_timesteps)), int(round(float(t_range[1]) * num_timesteps))
  if not 0 <= lo < hi <= num_timesteps:
    raise ValueError(f"t_range={tuple(t_range)}: needs 0 <= lo < hi <= 1 with at least one of the "
                     f"{num_timesteps} timesteps between them")
  return lo, hi


def sample_timesteps(rng, batch, num_timesteps, high_noise_prob=0.0, high_noise_from=0.8, t_range=()):
  """(batch,) int training timesteps: uniform over [0, T) (the reference), except that with probability
  `high_noise_prob` a sample's t is uniform over the top of the range, [high_noise_from * T, T).

  Drawing more samples where the noise is high spends more of the training on the levels at which the
  sampler decides a video's layout and motion (where the text matters most); the loss stays a plain mean.
  t_range = (lo, hi) draws uniformly over t/T in [lo, hi) instead (`timestep_window`): an expert for those
  levels. It and high_noise_prob are two ways to say where to train, so only one may be given.
  """
  if not 0.0 <= high_noise_prob <= 1.0:
    raise ValueError(f"high_noise_prob must be in [0, 1], got {high_noise_prob}")
  start = int(round(high_noise_from * num_timesteps))
  if not 0 <= start < num_timesteps:
    raise ValueError(f"high_noise_from must be in [0, 1) of the {num_timesteps} timesteps, got {high_noise_from}")
  if t_range and high_noise_prob:
    raise ValueError("give either t_range (train on those noise levels only) or high_noise_prob (more samples "
                     "at high noise), not both")
  lo, hi = timestep_window(num_timesteps, t_range)
  t = jax.random.randint(rng, (batch,), lo, hi)
  if high_noise_prob == 0.0:
    return t
  k_high, k_pick = jax.random.split(jax.random.fold_in(rng, 1))
  high = jax.random.randint(k_high, (batch,), start, num_timesteps)
  return jnp.where(jax.random.bernoulli(k_pick, high_noise_prob, (batch,)), high, t)


def frame_timesteps(rng, t, frames, num_timesteps, frame_noise_prob, t_range=()):
  """(B, frames) per-frame timesteps: with probability `frame_noise_prob` a sample's frames get independent
  uniform timesteps over [0, T) (Diffusion Forcing, Chen et al. 2024), otherwise every frame gets t (B,).

  Mixed noise levels inside a clip train the model to continue the video from the frames it sees well into
  the ones it barely sees, the same skill video prediction and pyramid sampling (`sample.frame_offset`) ask
  of it; the shared-t samples keep it a plain video denoiser. frame_noise_prob=0 returns t tiled.

  With t_range = (lo, hi) (an expert, `timestep_window`) a clip's noisiest frame lies in [lo, hi), the rule by
  which an expert split picks the model (`experts.switch_x0_fn`); its other frames are uniform over [0, hi),
  so a high-noise expert still sees clean and nearly clean frames next to noisy ones, as video prediction by
  `clean` hands it. One frame, drawn at random, gets a level in [lo, hi), the others [0, hi).
  """
  if not 0.0 <= frame_noise_prob <= 1.0:
    raise ValueError(f"frame_noise_prob must be in [0, 1], got {frame_noise_prob}")
  tiled = jnp.broadcast_to(t[:, None], (t.shape[0], frames))
  if frame_noise_prob == 0.0:
    return tiled
  lo, hi = timestep_window(num_timesteps, t_range)
  k_t, k_pick = jax.random.split(rng)
  independent = jax.random.randint(k_t, (t.shape[0], frames), 0, hi)
  if lo > 0:
    k_top, k_where = jax.random.split(jax.random.fold_in(k_t, 1))
    top = jax.random.randint(k_top, (t.shape[0], 1), lo, hi)
    where = jax.random.randint(k_where, (t.shape[0], 1), 0, frames)
    independent = jnp.where(jnp.arange(frames)[None] == where, top, independent)
  pick = jax.random.bernoulli(k_pick, frame_noise_prob, (t.shape[0], 1))
  return jnp.where(pick, independent, tiled)


def clean_prefix_lengths(rng, batch, clean_prefix_prob, video_frames):
  """(B,) int32 numbers of clean first frames: with probability `clean_prefix_prob` a sample gets k uniform
  over [1, video_frames // 2] (prediction gives 2 of 8 frames, extension half a window), otherwise 0.

  With `known_prefix_timesteps` this trains on exactly what video prediction and extension by the 'clean'
  method hand the model (`conditioning`): k known frames at level 0 next to unknown frames that share the
  sampler's level. Independent per-frame levels (`frame_timesteps`) almost never draw it (k frames near 0
  and the rest together at high noise), yet the high-noise steps are where a continuation's direction is
  decided.
  """
  if not 0.0 <= clean_prefix_prob <= 1.0:
    raise ValueError(f"clean_prefix_prob must be in [0, 1], got {clean_prefix_prob}")
  if clean_prefix_prob == 0.0:
    return jnp.zeros((batch,), jnp.int32)
  if video_frames < 2:
    raise ValueError(f"clean_prefix_prob needs clips of at least 2 frames to give some of them, got {video_frames}")
  k_known, k_pick = jax.random.split(rng)
  known = jax.random.randint(k_known, (batch,), 1, video_frames // 2 + 1)
  return jnp.where(jax.random.bernoulli(k_pick, clean_prefix_prob, (batch,)), known, 0)


def known_prefix_timesteps(t, frame_t, known, video_frames=None):
  """(B, frames) timesteps: a sample with known[i] = k > 0 gets its first k frames clean (timestep 0) and its
  other video frames at its own level t[i]; a sample with k = 0 keeps `frame_t` (B, frames). Frames from
  `video_frames` on (joint training's appended images) always keep `frame_t`.

  The known frames are context, as the 'clean' method's are at sampling: `known_prefix_mask` takes them out
  of the loss. Their sources: `clean_prefix_lengths`, and the data's reversal clips, whose frames before the
  turn show the opposite of the caption's motion (`MovingShapes(reversal_prob=...)`).
  """
  frames = frame_t.shape[1]
  video_frames = frames if video_frames is None else video_frames
  index = jnp.arange(frames)[None]
  known = jnp.asarray(known)[:, None]
  prefix = jnp.where(index < known, 0, jnp.where(index < video_frames, t[:, None], frame_t))
  return jnp.where(known > 0, prefix, frame_t)


def known_prefix_mask(known, frames):
  """(B, frames) bool, True on the frames that a sample's known prefix (`known_prefix_timesteps`) gives."""
  return jnp.arange(frames)[None] < jnp.asarray(known)[:, None]


def training_target(sched, x0, t, noise, prediction="eps"):
  """Regression target for the model output: the noise ('eps', the reference), v ('v') or x0 ('x0')."""
  if prediction == "eps":
    return noise
  if prediction == "v":
    return gaussian.v_target(sched, x0, t, noise)
  if prediction == "x0":
    return x0
  raise ValueError(f"unknown prediction {prediction!r}; expected one of {gaussian.PREDICTIONS}")


def snr_loss_weights(sched, t, prediction, snr_clip):
  """Per-sample (or per-frame) loss weights, shaped like t, that turn the L2 loss of any prediction into
  clip(SNR(t), lo, hi) times the squared error of the clean video it implies, with (lo, hi) = snr_clip.

  The plain L2 loss of each parameterisation is already such a weighting in x0 units (x̂0 − x0 = −(σ/α)·
  (ε̂ − ε) = −σ·(v̂ − v)): 1 for 'x0', SNR for 'eps', SNR + 1 for 'v'. The weight returned divides that out,
  so the prediction only chooses what the network outputs, not how the noise levels are weighed:
  (0, γ) is Min-SNR-γ (Hang et al. 2023); (1, γ) keeps x0's weight 1 at high noise and counts the
  low-noise levels up to γ times, where x0's plain loss gives the fine detail of the clean video almost no
  share of the gradient; (1, 1) is the plain x0 loss for every prediction. An empty snr_clip returns None
  (the prediction's own weighting; the reference).
  """
  if not snr_clip:
    return None
  lo, hi = (float(v) for v in snr_clip)
  if not 0.0 <= lo <= hi:
    raise ValueError(f"snr_clip must be (lo, hi) with 0 <= lo <= hi, got {tuple(snr_clip)}")
  ac = jnp.take(sched.alphas_cumprod, jnp.asarray(t)).astype(jnp.float32)
  snr = ac / (1.0 - ac)
  implicit = {"x0": jnp.ones_like(snr), "eps": snr, "v": snr + 1.0}
  if prediction not in implicit:
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {gaussian.PREDICTIONS}")
  return jnp.clip(snr, lo, hi) / implicit[prediction]


def diffusion_loss(pred, target, loss_type="l1", weights=None):
  """Per-sample loss of shape (B,): mean over all non-batch axes of w·|pred − target| ('l1') or w·(…)² ('l2').

  `weights` (optional) gets trailing singleton axes appended until it has pred's rank, then broadcasts, so
  (B,), (B, F) or full-shape weights all work. The mean is over all elements (not normalised by the weight
  sum), so a 0/1 mask zeroes its entries; renormalise in the caller if needed. Computed in float32. With
  weights=None, `.mean()` of the result equals the reference's loss (mean over all elements).
  """
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  if loss_type == "l1":
    err = jnp.abs(diff)
  elif loss_type == "l2":
    err = jnp.square(diff)
  else:
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
    err = err * weights.reshape(weights.shape + (1,) * (err.ndim - weights.ndim))
  return err.reshape(err.shape[0], -1).mean(axis=-1)


def temporal_deviation_loss(pred, target, loss_type="l2", frame_mask=None):
  """Per-sample loss (B,) of the part of the error that changes over frames: with e = pred − target of shape
  (B, F, ...), the mean of |e − mean_f e|² ('l2') or |·| ('l1') over the clip's frames.

  Added with weight λ to `diffusion_loss`, the L2 total is |ē|² + (1 + λ)|e − ē|² per frame: errors that
  are the same in every frame (appearance) keep their weight and errors that differ between frames
  (motion: where the object is in each frame) count 1 + λ times. The minimiser is unchanged, since both
  terms are minimised by the conditional mean of x0; only the gradient's emphasis moves towards motion.

  frame_mask (B, F) bool (optional) restricts the mean and the loss to the True frames, e.g. the video
  frames of a joint image+video clip (the appended images are not part of its motion). The result is
  normalised like `diffusion_loss`, by all elements, so masked frames count as zero error.
  """
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  w = jnp.ones(pred.shape[:2], jnp.float32) if frame_mask is None else frame_mask.astype(jnp.float32)
  w = w.reshape(w.shape + (1,) * (pred.ndim - 2))
  mean = ((pred - target) * w).sum(axis=1, keepdims=True) / jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)
  return diffusion_loss(pred - mean, target, loss_type, weights=w)
