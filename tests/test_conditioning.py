"""Conditional sampling (replacement, reconstruction guidance) and the long-video window plan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.diffusion import conditioning, samplers, schedules
from vidgen_jax.sample import long_video

T = 6


def _sched():
  return schedules.make_schedule(1000, kind="cosine")


def _constant_video_oracle(sched, prior_std=0.5):
  """Exact E[x0 | z_t] for videos whose pixels all share one value c ~ N(0, prior_std²)."""
  def x0_fn(z, t):
    ab = jnp.take(sched.alphas_cumprod, t).reshape(-1, 1, 1, 1, 1)
    alpha, var = jnp.sqrt(ab), 1.0 - ab
    n = np.prod(z.shape[1:])
    s = z.mean(axis=(1, 2, 3, 4), keepdims=True)           # sufficient statistic: alpha c + noise/sqrt(n)
    c = alpha * prior_std**2 * s / (ab * prior_std**2 + var / n)
    return jnp.broadcast_to(c, z.shape)
  return x0_fn


def test_frames_observation_and_downsample():
  video = jnp.arange(2 * T * 4 * 4 * 1, dtype=jnp.float32).reshape(2, T, 4, 4, 1)
  obs = conditioning.frames_observation(video, np.arange(T) < 2)
  assert obs.known_frames.shape == (2, T)
  np.testing.assert_array_equal(obs.y[:, 2:], 0.0)
  np.testing.assert_array_equal(obs.observe(video), obs.y)
  low = conditioning.downsample(video, 2)
  assert low.shape == (2, T, 2, 2, 1)
  np.testing.assert_allclose(low[0, 0, 0, 0, 0], video[0, 0, :2, :2, 0].mean())
  with pytest.raises(ValueError, match="divisible"):
    conditioning.downsample(video, 3)
  lowres = conditioning.lowres_observation(low + 1.0, 2)
  projected = lowres.project(video)
  np.testing.assert_allclose(conditioning.downsample(projected, 2), low + 1.0)   # consistent with y ...
  np.testing.assert_allclose(projected - video, 1.0)                             # ... by the smallest change
  np.testing.assert_array_equal(obs.project(video * 0)[:, :2], video[:, :2])


def test_reconstruction_guidance_is_the_papers_gradient_step():
  """x0(z) = z + mean over frames of z mixes frames, so the error on known frames moves unknown ones."""
  sched = _sched()
  rng = jax.random.key(0)
  z = jax.random.normal(jax.random.key(1), (2, T, 3, 3, 1))
  y = jax.random.normal(jax.random.key(2), z.shape)
  known = np.arange(T) < 2
  obs = conditioning.frames_observation(y, known)
  x0_fn = lambda z, t: z + z.mean(axis=1, keepdims=True)
  t = jnp.array([500, 500])
  w = 3.0
  got = conditioning.conditioned_x0_fn(x0_fn, sched, obs, method="reconstruction", weight=w, rng=rng)(z, t)
  # By hand: z_in has its known frames replaced; r = y - x0(z_in) on known frames; the gradient of
  # sum(r²) w.r.t. an unknown frame is -2/T * (sum of r over known frames).
  noise = jax.random.normal(jax.random.fold_in(rng, 500), z.shape)
  ab = sched.alphas_cumprod[500]
  z_in = jnp.where(known[None, :, None, None, None], jnp.sqrt(ab) * y + jnp.sqrt(1 - ab) * noise, z)
  x0 = x0_fn(z_in, t)
  r = jnp.where(known[None, :, None, None, None], y - x0, 0.0)
  grad_unknown = -2.0 / T * r.sum(axis=1, keepdims=True)
  expected = x0 - w * jnp.sqrt(ab) / 2 * grad_unknown
  np.testing.assert_allclose(got[:, 2:], expected[:, 2:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, :2], y[:, :2])                    # known frames pasted
  rep = conditioning.conditioned_x0_fn(x0_fn, sched, obs, method="replacement", rng=rng)(z, t)
  np.testing.assert_allclose(rep[:, 2:], x0[:, 2:], rtol=1e-5, atol=1e-6)   # no gradient term
  assert float(jnp.abs(got[:, 2:] - rep[:, 2:]).max()) > 1e-2


def test_conditioning_errors():
  sched = _sched()
  obs = conditioning.frames_observation(jnp.zeros((1, T, 2, 2, 1)), np.arange(T) < 1)
  with pytest.raises(ValueError, match="unknown"):
    conditioning.conditioned_x0_fn(lambda z, t: z, sched, obs, method="magic", rng=jax.random.key(0))
  with pytest.raises(ValueError, match="rng"):
    conditioning.conditioned_x0_fn(lambda z, t: z, sched, obs)
  low = conditioning.lowres_observation(jnp.zeros((1, T, 1, 1, 1)), 2)
  with pytest.raises(ValueError, match="known frames"):
    conditioning.conditioned_x0_fn(lambda z, t: z, sched, low, method="replacement")


def _sample(sched, obs, method, weight, seed=0, shape=(64, T, 2, 2, 1)):
  x0_fn = conditioning.conditioned_x0_fn(_constant_video_oracle(sched), sched, obs, method=method,
                                         weight=weight, rng=jax.random.key(seed + 100))
  return samplers.ddim_sample(x0_fn, sched, shape, jax.random.key(seed), num_steps=50, prediction="x0",
                              clip_denoised=False)


def test_known_frames_determine_the_rest_with_the_exact_denoiser():
  """Data: every pixel of a video shares one value c. Given frame 0, the other frames must equal it."""
  sched = _sched()
  c = jnp.linspace(-0.8, 0.8, 64).reshape(64, 1, 1, 1, 1)
  video = jnp.broadcast_to(c, (64, T, 2, 2, 1))
  obs = conditioning.frames_observation(video, np.arange(T) < 1)
  free = _sample(sched, conditioning.frames_observation(video, np.zeros(T, bool)), "replacement", 0.0)
  errors = {}
  for method, weight in (("replacement", 0.0), ("reconstruction", 5.0)):
    out = _sample(sched, obs, method, weight)
    np.testing.assert_allclose(out[:, 0], video[:, 0], atol=1e-6)     # the given frame is kept
    errors[method] = float(jnp.sqrt(jnp.mean(jnp.square(out[:, 1:] - video[:, 1:]))))
  free_error = float(jnp.sqrt(jnp.mean(jnp.square(free[:, 1:] - video[:, 1:]))))
  assert errors["reconstruction"] < 0.02 < 0.2 < free_error
  assert errors["reconstruction"] < errors["replacement"]


def test_super_resolution_matches_the_low_resolution_input():
  sched = _sched()
  c = jnp.linspace(-0.8, 0.8, 16).reshape(16, 1, 1, 1, 1)
  video = jnp.broadcast_to(c, (16, T, 4, 4, 1))
  obs = conditioning.lowres_observation(conditioning.downsample(video, 2), 2)
  out = _sample(sched, obs, "reconstruction", 5.0, shape=(16, T, 4, 4, 1))
  assert float(jnp.abs(conditioning.downsample(out, 2) - obs.y).max()) < 0.02


@pytest.mark.parametrize("frames, overlap, given, expected", [
    (8, 4, 0, [(0, 0)]),
    (32, 4, 0, [(0, 0), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4)]),
    (30, 4, 0, [(0, 0), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (22, 6)]),
    (8, 4, 2, [(0, 2)]),
    (16, 6, 2, [(0, 2), (2, 6), (4, 6), (6, 6), (8, 6)]),
    (5, 4, 0, [(0, 0)]),
])
def test_plan_windows(frames, overlap, given, expected):
  plan = long_video.plan_windows(frames, 8, overlap, given=given)
  assert [(w.start, w.known) for w in plan] == expected
  assert min(plan[-1].start + 8, frames) == frames


def test_story_windows_take_the_prompt_of_their_first_new_frame():
  plan = long_video.plan_windows(24, 8, 4, segment_frames=8, num_prompts=3)
  assert [(w.start, w.prompt) for w in plan] == [(0, 0), (4, 1), (8, 1), (12, 2), (16, 2)]
  # Windows that do not line up with the segments stop at the next segment instead of making its first
  # frames under the previous prompt (overlap 2: the third window would otherwise make frames 16-19).
  for frames, overlap, seg in ((24, 2, 8), (32, 4, 8), (30, 6, 8), (20, 3, 5), (21, 4, 6)):
    plan = long_video.plan_windows(frames, 8, overlap, segment_frames=seg, num_prompts=-(-frames // seg))
    made = [f for w in plan for f in range(w.start + w.known, w.end)]
    assert made == list(range(frames))                                   # each frame once, in order
    assert all(f // seg == w.prompt for w in plan for f in range(w.start + w.known, w.end))
    assert all(0 < w.end - w.start <= 8 and w.known <= overlap or w is plan[-1] for w in plan)
  assert [(w.start, w.known, w.end) for w in long_video.plan_windows(24, 8, 2, segment_frames=8, num_prompts=3)] \
      == [(0, 0, 8), (6, 2, 14), (12, 2, 16), (14, 2, 22), (16, 6, 24)]
  with pytest.raises(ValueError, match="cover fewer"):
    long_video.plan_windows(32, 8, 4, segment_frames=8, num_prompts=3)
  with pytest.raises(ValueError, match="overlap"):
    long_video.plan_windows(16, 8, 0)
  with pytest.raises(ValueError, match="window"):
    long_video.plan_windows(16, 8, 4, given=9)


def test_run_windows_hands_each_window_the_frames_made_so_far():
  calls = []

  def sample_window(known, known_count, prompt, index):
    calls.append((known.copy(), known_count))
    out = known.copy()
    last = known[:, known_count - 1, 0, 0, 0] if known_count else np.zeros(known.shape[0])
    for i in range(known_count, known.shape[1]):
      out[:, i] = (last + i - known_count + 1)[:, None, None, None]   # counts up from the last known frame
    return out

  first = np.full((2, 2, 1, 1, 1), 5.0, np.float32)
  first[:, 1] = 6.0
  video = long_video.run_windows(sample_window, first, 20, 8, 4)
  np.testing.assert_array_equal(video[0, :, 0, 0, 0], np.arange(5, 25))   # continuous across windows
  for known, count in calls[1:]:
    assert count >= 4 and np.all(np.diff(known[0, :count, 0, 0, 0]) == 1)

  def by_prompt(known, known_count, prompt, index):   # every new frame says which prompt made it
    return np.where(np.arange(known.shape[1])[None, :, None, None, None] < known_count, known, float(prompt))

  story = long_video.run_windows(by_prompt, np.zeros((1, 0, 1, 1, 1), np.float32), 24, 8, 2, segment_frames=8,
                                 num_prompts=3)
  np.testing.assert_array_equal(story[0, :, 0, 0, 0], np.arange(24) // 8)   # each segment under its prompt


def test_extension_and_prediction_scores_on_real_clips():
  from vidgen_jax.eval import conditional_eval, evaluator as ev, run_eval
  prompts = ["a red square rotating clockwise", "a blue circle moving left", "a green triangle growing"]
  segs = [run_eval.real_videos(prompts, seed) for seed in range(4)]          # 4 independent clips each
  long = np.concatenate(segs, axis=1)                                         # (3, 32, 32, 32, 3)
  scores = conditional_eval.score_extension(long, prompts, ev.default_evaluator())
  assert [s["joint"] for s in scores["per_segment"]] == [1.0] * 4
  assert scores["all_segments"] == 1.0 and scores["boundary_consistency"] == 1.0
  assert scores["boundary_jump"] > 2.0          # independent clips: every cut jumps
  assert all(turn > 5 for turn in scores["rotation_turn_per_segment"])    # real rotations: 8.6-17 per frame
  smooth = run_eval.real_videos(prompts, 0, num_frames=32)   # one continuous 32-frame clip per prompt
  assert 0.5 < conditional_eval.boundary_jump(smooth) < 1.5
  wrong = conditional_eval.score_extension(long, prompts[1:] + prompts[:1], ev.default_evaluator())
  assert wrong["all_segments"] == 0.0
  assert all(abs(turn) < 2 for turn in wrong["rotation_turn_per_segment"])  # the growing triangle, asked to turn
  predicted = conditional_eval.score_prediction(segs[0], prompts, ev.default_evaluator())
  assert predicted["joint"] == 1.0 and predicted["by_motion"]["rotating clockwise"]["turn"] > 5
  with pytest.raises(ValueError, match="no boundary"):
    conditional_eval.boundary_jump(segs[0])


def test_real_continuation_ceilings_of_extension_and_stories():
  from vidgen_jax.eval import conditional_eval, evaluator as ev, run_eval
  prompts = ["a red square rotating clockwise", "a blue circle moving left", "a green triangle growing",
             "a white circle shrinking", "a cyan square moving down and right"]
  real = run_eval.real_videos(prompts, seed=3)
  cont = run_eval.continued_real_videos(prompts, seed=3, num_frames=32)
  np.testing.assert_array_equal(cont[:, :8], real)                     # the real clip, then carried on
  # the circle moving left: its centre keeps the real clip's speed until it reaches the frame's edge
  xs = [np.nonzero(f[..., 2].max(0))[0].mean() for f in cont[1, :12] if f.any()]
  steps = np.diff(xs)
  assert np.all(steps < 0) and np.ptp(steps[:6]) < 0.6
  visible = cont.reshape(5, 32, -1).max(-1) > 0
  assert visible[0].all() and not visible[1, -8:].any() and not visible[3, -8:].any()   # gone: left, shrunk
  evaluator = ev.default_evaluator()
  ceiling = conditional_eval.score_extension(cont, prompts, evaluator)
  assert ceiling["per_segment"][0]["joint"] == 1.0 and ceiling["all_segments"] <= 0.4  # only rotation can go on
  # back and forth: segment k is the prompt's motion (k even) or its opposite (k odd), in the frame throughout
  story = [run_eval.story_prompts(p, 4) for p in prompts]
  assert story[1] == ["a blue circle moving left", "a blue circle moving right"] * 2
  assert story[2][1] == "a green triangle shrinking" and story[0][1] == "a red square rotating counterclockwise"
  bf = run_eval.continued_real_videos(prompts, seed=3, num_frames=32, back_and_forth=True)
  np.testing.assert_array_equal(bf[:, 9], bf[:, 7])                    # the turn: frame 8 + 1 = frame 8 - 1
  scores = conditional_eval.score_extension(bf, story, evaluator)
  assert scores["all_segments"] == 1.0 and scores["boundary_object_kept"] == 1.0
  assert all(turn > 5 for turn in scores["rotation_turn_per_segment"])   # each segment turns the way it is told
  assert "boundary_consistency" not in scores                          # the motion changes on purpose
  assert conditional_eval.score_extension(bf, prompts, evaluator)["per_segment"][1]["motion"] == 0.0
  with pytest.raises(ValueError, match="one prompt per 8-frame segment"):
    conditional_eval.score_extension(bf, [p[:3] for p in story], evaluator)


def test_psnr():
  from vidgen_jax.eval import conditional_eval
  a = np.zeros((2, 2, 4, 4, 3), np.uint8)
  b = a + np.uint8(16)
  np.testing.assert_allclose(conditional_eval.psnr(a, b), 10 * np.log10(255.0**2 / 256.0))
  assert conditional_eval.psnr(a, a) > 100


def _per_frame_constant_video_oracle(sched, prior_std=0.5):
  """Exact E[x0 | z] for constant videos (every pixel c ~ N(0, prior_std²)) when each frame f has its own
  timestep t_f: frame f's pixel mean is alpha_f c + noise of variance (1 − ā_f) / n."""
  def x0_fn(z, t):
    t = jnp.broadcast_to(jnp.reshape(t, t.shape + (1,) * (2 - t.ndim)), z.shape[:2])
    ab = jnp.take(sched.alphas_cumprod, t)
    n = np.prod(z.shape[2:])
    precision = ab / ((1.0 - ab) / n)                      # of each frame's evidence about c
    s = z.mean(axis=(2, 3, 4)) / jnp.sqrt(ab)              # each frame's estimate of c
    c = (precision * s).sum(1) / (1.0 / prior_std**2 + precision.sum(1))
    return jnp.broadcast_to(c.reshape(-1, 1, 1, 1, 1), z.shape)
  return x0_fn


def test_clean_method_feeds_known_frames_at_timestep_zero():
  """'clean' hands the model the known frames exactly at t = 0 and the rest at the sampler's t; with the
  exact per-frame-time denoiser the given frame then pins down the others, better than replacement."""
  sched = _sched()
  c = jnp.linspace(-0.8, 0.8, 64).reshape(64, 1, 1, 1, 1)
  video = jnp.broadcast_to(c, (64, T, 2, 2, 1))
  obs = conditioning.frames_observation(video, np.arange(T) < 1)
  seen = []

  def oracle(z, t):
    seen.append((z, t))
    return _per_frame_constant_video_oracle(sched)(z, t)

  errors = {}
  for method in ("clean", "replacement"):
    x0_fn = conditioning.conditioned_x0_fn(oracle, sched, obs, method=method, rng=jax.random.key(7))
    out = samplers.ddim_sample(x0_fn, sched, video.shape, jax.random.key(0), num_steps=50, prediction="x0",
                               clip_denoised=False)
    np.testing.assert_allclose(out[:, 0], video[:, 0], atol=1e-6)
    errors[method] = float(jnp.sqrt(jnp.mean(jnp.square(out[:, 1:] - video[:, 1:]))))
  clean = conditioning.conditioned_x0_fn(oracle, sched, obs, method="clean")
  noisy = jax.random.normal(jax.random.key(1), video.shape)
  clean(noisy, jnp.full((64,), 500))
  z, t = seen[-1]
  np.testing.assert_array_equal(t[:, 0], 0)
  np.testing.assert_array_equal(t[:, 1:], 500)
  np.testing.assert_array_equal(z[:, 0], video[:, 0])
  np.testing.assert_array_equal(z[:, 1:], noisy[:, 1:])
  assert errors["clean"] < 0.01 and errors["clean"] < errors["replacement"], errors
  low = conditioning.lowres_observation(jnp.zeros((1, T, 1, 1, 1)), 2)
  with pytest.raises(ValueError, match="known frames"):
    conditioning.conditioned_x0_fn(lambda z, t: z, sched, low, method="clean")
