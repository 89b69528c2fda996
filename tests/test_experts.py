"""Expert denoisers by noise level: the pure switch, its wiring into `vdm.sample`, and the generator pair."""
import copy
import functools
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers import HashTextEncoder, micro_config
from vidgen_jax.diffusion import conditioning, experts, samplers, schedules
from vidgen_jax.sample import generate
from vidgen_jax.train import setup, vdm


def test_switch_index_maps_a_noise_level_to_a_schedule_index():
  assert experts.switch_index(0.0, 1000) == 0
  assert experts.switch_index(0.5, 1000) == 500
  assert experts.switch_index(1.0, 1000) == 1000
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="t/T in"):
      experts.switch_index(bad, 1000)


def test_switch_runs_the_high_expert_from_the_switch_up_and_the_noisiest_frame_decides():
  high = lambda z, t: z + 1.0
  low = lambda z, t: z - 1.0
  z = jnp.zeros((2, 3, 2, 2, 3))
  fn = jax.jit(lambda z, t, s: experts.switch_x0_fn(high, low, s)(z, t))   # the switch may be traced
  for t, expected in ((499, -1.0), (500, 1.0), (999, 1.0), (0, -1.0)):
    np.testing.assert_array_equal(fn(z, jnp.full((2,), t), 500), expected)
  # Per-frame levels (clean conditioning: known frames at 0, the others at the sampler's t).
  per_frame = jnp.array([[0, 700, 700], [0, 700, 700]])
  np.testing.assert_array_equal(fn(z, per_frame, 500), 1.0)
  np.testing.assert_array_equal(fn(z, per_frame, 701), -1.0)
  # Reconstruction guidance differentiates through the switch: the chosen expert's gradient.
  grad = jax.grad(lambda z, s: jnp.sum(experts.switch_x0_fn(lambda z, t: 3.0 * z, lambda z, t: -2.0 * z, s)(
      z, jnp.full((2,), 600))), argnums=0)
  np.testing.assert_array_equal(grad(z, 500), 3.0)
  np.testing.assert_array_equal(grad(z, 601), -2.0)


class _LinearModel:
  """Stands in for the U-Net in `vdm.sample`: raw output = scale · x_t (what it means depends on the
  parametrisation), so the trajectory depends on which model ran at every step."""

  def __init__(self, scale):
    self.scale = scale

  def apply(self, params, x, t, cond, null_cond, text_tokens, text_mask):
    return self.scale * x + params["bias"]


def _config(prediction):
  return ml_collections.ConfigDict({
      "sample": {"sampler": "ddim", "steps": 6, "eta": 0.0, "cond_scale": 1.0, "clip_denoised": True},
      "data": {"num_frames": 2, "image_size": 4}, "diffusion": {"prediction": prediction}})


@pytest.mark.parametrize("switch", [0.0, 0.45, 1.0])
def test_vdm_sample_splits_the_steps_between_two_parametrisations(switch):
  """An x0 model above the switch and a v model below equals a hand-made DDIM run of the same split;
  switch 0 is the x0 model alone, 1 the v model alone (each sampled in its own parametrisation)."""
  sched = schedules.make_schedule(100, kind="cosine")
  high, low = _LinearModel(0.3), _LinearModel(-0.5)
  hp, lp = {"bias": jnp.float32(0.1)}, {"bias": jnp.float32(-0.2)}
  tokens, mask = jnp.ones((2, 3, 5)), jnp.ones((2, 3), bool)
  rng = jax.random.PRNGKey(0)
  switch_t = experts.switch_index(switch, sched.num_timesteps)
  split = vdm.sample((hp, lp), rng, tokens, mask, model=high, sched=sched, config=_config("x0"),
                     low_noise=experts.LowNoiseExpert(low, "v", switch_t))

  def by_hand(z, t):
    x0_high = conditioning.model_x0_fn(lambda z, t: high.apply(hp, z, t, None, None, None, None), sched, "x0")
    x0_low = conditioning.model_x0_fn(lambda z, t: low.apply(lp, z, t, None, None, None, None), sched, "v")
    return jnp.where(t[0] >= switch_t, x0_high(z, t), x0_low(z, t))
  expected = samplers.ddim_sample(by_hand, sched, split.shape, rng, num_steps=6, eta=0.0, prediction="x0")
  np.testing.assert_allclose(split, expected, atol=1e-6)
  if switch in (0.0, 1.0):
    model, params, prediction = (high, hp, "x0") if switch == 0.0 else (low, lp, "v")
    alone = vdm.sample(params, rng, tokens, mask, model=model, sched=sched, config=_config(prediction))
    np.testing.assert_allclose(split, alone, atol=1e-5)
  else:   # both experts ran: the split is neither model alone
    for model, params, prediction in ((high, hp, "x0"), (low, lp, "v")):
      alone = vdm.sample(params, rng, tokens, mask, model=model, sched=sched, config=_config(prediction))
      assert np.abs(np.asarray(split) - np.asarray(alone)).max() > 1e-2


class _TextModel(_LinearModel):
  """_LinearModel plus params['text'] unless the condition is dropped: the guided output is then
  scale · x + bias + cond_scale · text, which shows the guidance weight each expert ran with."""

  def apply(self, params, x, t, cond, null_cond, text_tokens, text_mask):
    text = jnp.where(null_cond.reshape((-1,) + (1,) * (x.ndim - 1)), 0.0, params["text"])
    return super().apply(params, x, t, cond, null_cond, text_tokens, text_mask) + text


def test_the_low_noise_expert_has_its_own_guidance_weight():
  sched = schedules.make_schedule(100, kind="cosine")
  hp, lp = {"bias": jnp.float32(0.1), "text": jnp.float32(0.05)}, {"bias": jnp.float32(-0.2), "text": jnp.float32(0.04)}
  tokens, mask, z = jnp.ones((2, 3, 5)), jnp.ones((2, 3), bool), jnp.zeros((2, 2, 4, 4, 3))
  x0 = lambda low_scale, t: vdm.guided_denoiser(
      (hp, lp), tokens, mask, model=_TextModel(0.3), sched=sched, prediction="x0", cond_scale=3.0,
      low_noise=experts.LowNoiseExpert(_TextModel(-0.5), "x0", 50, low_scale))[0](z, jnp.full((2,), t))
  np.testing.assert_allclose(x0(1.0, 70), 0.1 + 3.0 * 0.05, rtol=1e-6)     # high noise: the sampler's 3
  np.testing.assert_allclose(x0(1.0, 20), -0.2 + 1.0 * 0.04, rtol=1e-6)    # low noise: its own 1
  np.testing.assert_allclose(x0(None, 20), -0.2 + 3.0 * 0.04, rtol=1e-6)   # None: the sampler's


def _generator(prediction, seed, **changes):
  config = micro_config(image_size=16)
  config.diffusion.prediction = prediction
  config.sample.steps = 3
  for dotted, value in changes.items():
    section, key = dotted.split("__")
    config[section][key] = value
  run = setup.build_run(config, text_encoder=HashTextEncoder(), devices=jax.devices()[:1])
  return generate.Generator(run, run.init_state(seed).ema_params, step=seed)


@functools.lru_cache(maxsize=1)
def _pair():
  return _generator("x0", 0), _generator("v", 1, model__input_skip=True)


def test_generator_split_at_one_is_the_low_noise_model_alone():
  """A v + input-skip U-Net run through the x0 path of the split gives its own samples (uint8, ±1 for the
  float rounding of the two paths)."""
  high, low = _pair()
  prompts = ["a red circle moving left", "a blue square growing"]
  split = high.with_low_noise_expert(low, 1.0, workdir="low")
  assert split.tag == "experts_low-1_s1" and split.experts["low_noise_prediction"] == "v"
  guided = high.with_low_noise_expert(low, 0.5, workdir="low", cond_scale=1)
  assert guided.tag == "experts_low-1_s0.5_g1" and guided.experts["low_noise_cond_scale"] == 1.0
  assert high.with_low_noise_expert(low, 0.5).tag == "experts_s0.5"   # a low-noise model without a workdir
  assert guided.low_noise.cond_scale == 1.0 and "low_noise_cond_scale" not in split.experts
  with pytest.raises(ValueError, match="guidance weight must be >= 0"):
    high.with_low_noise_expert(low, 0.5, cond_scale=-1)
  got, alone = split.generate(prompts, seed=3), low.generate(prompts, seed=3)
  assert got.shape == alone.shape == (2, 2, 16, 16, 3)
  assert np.abs(got.astype(int) - alone.astype(int)).max() <= 1


def test_generator_split_refuses_what_cannot_share_a_chain():
  high, low = _pair()
  with pytest.raises(ValueError, match="noise schedules"):
    high.with_low_noise_expert(_generator("v", 1, diffusion__timesteps=500), 0.5)
  with pytest.raises(ValueError, match="num_frames"):
    high.with_low_noise_expert(_generator("v", 1, data__num_frames=4), 0.5)
  with pytest.raises(ValueError, match="text with different encoders"):
    high.with_low_noise_expert(_generator("v", 1, text__max_length=8), 0.5)
  with pytest.raises(ValueError, match="t/T in"):
    high.with_low_noise_expert(low, 1.2)
  split = high.with_low_noise_expert(low, 0.5)
  with pytest.raises(ValueError, match="neither may already be a split"):
    split.with_low_noise_expert(low, 0.5)
  with pytest.raises(ValueError, match="frame_noise_prob"):   # neither was trained with per-frame noise
    split.generate_long([["a red circle moving left"]], method="clean")
  config = lambda diffusion, data: ml_collections.ConfigDict(dict(diffusion=diffusion, data=data))
  assert not generate.trained_for_clean(config(dict(frame_noise_prob=0.0), dict(reversal_prob=0.0)))
  assert not generate.trained_for_clean(config({}, {}))   # configs written before the options existed
  assert all(generate.trained_for_clean(config({name: 0.5}, {}))
             for name in ("frame_noise_prob", "clean_prefix_prob"))
  assert generate.trained_for_clean(config({}, dict(reversal_prob=0.5)))
  with pytest.raises(ValueError, match="low-noise workdir"):
    generate.load_generator("unused", low_noise_step=3)


def test_load_generator_refuses_a_non_diffusion_partner_before_restoring_anything(tmp_path):
  import json
  for name, family in (("vdm", "vdm"), ("tok", "cvivit")):   # configs only: no checkpoint to restore
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps({"family": family}))
  with pytest.raises(ValueError, match="tok is a 'cvivit' workdir"):
    generate.load_generator(tmp_path / "vdm", low_noise_workdir=tmp_path / "tok")


def test_sweep_files_of_a_split_sit_beside_the_models_own():
  from vidgen_jax.eval import run_eval
  names = lambda *a: [p.name for p in run_eval.sweep_files("w", *a)]
  assert names("cond_scale") == ["sweep_cond_scale.json", "sweep_cond_scale.png"]
  assert names("cond_scale", "experts_s0.5") == ["sweep_experts_s0.5_cond_scale.json",
                                                 "sweep_experts_s0.5_cond_scale.png"]
  assert names("switch", "experts_s0") == ["sweep_switch.json", "sweep_switch.png"]


def test_eval_directories_name_the_sampling_settings_given():
  """Evaluations of one step with other sampling settings write to their own directories."""
  from vidgen_jax.eval import run_eval
  assert run_eval.sampling_tag({}) == run_eval.sampling_tag({"steps": None}) == ""
  assert run_eval.sampling_tag({"steps": 25, "cond_scale": 5.0, "sampler": "ddim", "frame_offset": None}) \
      == "cond_scale5_samplerddim_steps25"
  assert run_eval.eval_dir("w", 1, "step_3", "", run_eval.sampling_tag({"cond_scale": 1.5})).name \
      == "step_3_cond_scale1.5_seed1"


def _trained_on(gen, t_range, init_from=""):
  """The generator with its config saying it was trained on t_range only (diffusion.t_range), fine-tuned from
  `init_from`."""
  run = copy.copy(gen.run)
  run.config = copy.deepcopy(gen.config)
  run.config.diffusion.t_range = t_range
  run.config.train.init_from = str(init_from)
  return generate.Generator(run, gen.params, gen.step)


def test_experts_trained_on_part_of_the_levels_sample_only_inside_a_split_that_covers_them(tmp_path, caplog):
  high, low = (_trained_on(g, r) for g, r in zip(_pair(), ((0.5, 1.0), (0.0, 0.5))))
  high.with_low_noise_expert(low, 0.5).check_full_chain()          # exactly complementary
  high.with_low_noise_expert(_pair()[1], 0.7).check_full_chain()   # a low model trained on every level
  with pytest.raises(ValueError, match=r"high-noise model was trained on the noise levels t/T in \[0.5, 1\) "
                                       r"\(diffusion.t_range\) but would denoise t/T in \[0.4, 1\)"):
    high.with_low_noise_expert(low, 0.4)
  with pytest.raises(ValueError, match=r"low-noise model low was trained .* would denoise t/T in \[0, 0.6\)"):
    high.with_low_noise_expert(low, 0.6, workdir="low")
  with pytest.raises(ValueError, match="low-noise model"):
    _pair()[0].with_low_noise_expert(low, 1.0)                     # switch 1: the low model alone
  for alone in (high, low):
    for sample in (lambda: alone.generate(["a red circle moving left"]),
                   lambda: alone.generate_long([["a red circle moving left"]]),
                   lambda: alone.upsample(np.zeros((1, 2, 8, 8, 3), np.uint8), ["a red circle moving left"])):
      with pytest.raises(ValueError, match=r"this model was trained .* would denoise t/T in \[0, 1\)"):
        sample()
  # Training an expert writes no samples it cannot make, and says why.
  from vidgen_jax.train import loop
  state = types.SimpleNamespace(ema_params=low.params)
  with caplog.at_level("INFO", logger="vidgen.train"):
    assert loop.write_samples(low.run, state, tmp_path, 4) is None
  assert "no training samples at step 4: this model was trained on the noise levels t/T in [0, 0.5)" in caplog.text
  assert not (tmp_path / "samples").exists()


def test_an_expert_writes_training_samples_with_the_model_it_was_fine_tuned_from(tmp_path, caplog):
  """Training samples of an expert come from the split with its train.init_from source on the other levels:
  the same videos as that split built by hand; and a clear refusal where no such split exists."""
  from vidgen_jax import configs
  from vidgen_jax.train import checkpoint as ckpt_lib
  from vidgen_jax.train import loop
  source_gen, v_model = _pair()
  source = tmp_path / "source"
  source.mkdir()
  (source / "config.json").write_text(configs.to_json(source_gen.config))
  ckpt = ckpt_lib.Checkpointer(source)
  state = source_gen.run.init_state(0)   # its EMA parameters are source_gen.params
  ckpt.save(7, state.replace(step=jnp.asarray(7, state.step.dtype)), force=True)
  ckpt.close()
  prompts = list(source_gen.config.sample.prompts)
  low, high = _trained_on(v_model, (0.0, 0.5), source), _trained_on(v_model, (0.5, 1.0), source)
  with caplog.at_level("INFO", logger="vidgen.sample"), low.run.context():   # as loop.train calls it
    got = loop.write_samples(low.run, types.SimpleNamespace(ema_params=low.params), tmp_path / "low", 4)
  np.testing.assert_array_equal(got, source_gen.with_low_noise_expert(low, 0.5).generate(prompts, seed=0))
  assert (tmp_path / "low" / "samples" / "step_4.gif").is_file()
  assert json.loads((tmp_path / "low" / "samples" / "step_4.json").read_text())["experts"] == {   # who sampled
      "low_noise_workdir": "(this run)", "low_noise_step": 4, "switch": 0.5, "low_noise_prediction": "v",
      "high_noise_prediction": "x0", "high_noise_workdir": str(source)}
  assert f"t/T in [0, 0.5): {source} at step 7 denoises the other levels" in caplog.text
  split = high.with_init_source()   # the high expert above 0.5, its source below
  assert split.params[0] is high.params and split.low_noise.switch_t == high.run.sched.num_timesteps // 2
  assert split.experts["low_noise_workdir"] == str(source) and split.experts["low_noise_step"] == 7
  assert split.experts["high_noise_workdir"] == "(this run)"
  with pytest.raises(generate.SamplesUnavailable, match="cannot give its train.init_from source the levels on both"):
    _trained_on(v_model, (0.3, 0.7), source).training_samples()
  with pytest.raises(generate.SamplesUnavailable,
                     match=r"\[0, 0.5\) .* train.init_from source failed: .*gone/config.json not found"):
    _trained_on(v_model, (0.0, 0.5), tmp_path / "gone").training_samples()
  other_text = copy.deepcopy(source_gen.config)
  other_text.text.max_length = 8
  (source / "config.json").write_text(configs.to_json(other_text))
  with pytest.raises(generate.SamplesUnavailable, match="source failed: .* reads text with another encoder"):
    low.training_samples()
  assert _pair()[0].with_init_source() is _pair()[0]   # a model of every level samples alone
