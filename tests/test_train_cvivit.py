"""C-ViViT tokenizer training: the perceptual term (frozen VGG outside the state), images-first phase, bfloat16
compute."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_same_training_state
from vidgen_jax import configs
from vidgen_jax.data import pipeline
from vidgen_jax.losses import perceptual
from vidgen_jax.train import setup
from vidgen_jax.train.validation import ConfigError
from vidgen_jax.train import cvivit, phenaki

ONE = jax.devices()[:1]


def _config(**train):
  c = configs.load_config_file("configs/cvivit_shapes.py:runlocal=True")
  c.loss.gan_weight = 0.0
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def _batch(config):
  it = iter(pipeline.make_dataset(pipeline.make_source(config.data), config.train.batch_size, 0))
  return next(it)


def _steps(run, batch, n):
  state, step = run.init_state(0), run.jit_train_step()
  out = []
  with run.context():
    for _ in range(n):
      state, m = step(state, pipeline.to_global(batch, run.batch_shardings()))
      out.append(jax.device_get(m))
  return state, out


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
  return perceptual.save_random_vgg16(tmp_path_factory.mktemp("vgg") / "vgg16.npz", seed=1)


def test_perceptual_term_is_in_the_loss_but_vgg_is_not_in_the_state(vgg_file):
  config = _config()
  config.loss.perceptual_weight, config.loss.perceptual_weights = 0.5, str(vgg_file)
  cvivit.validate(config, 1)
  run = setup.build_run(config, devices=ONE)
  batch = _batch(config)
  state, (_, m) = _steps(run, batch, 2)   # two: the first step's learning rate is 0 (warm-up)
  assert m["perceptual_loss"] > 0
  np.testing.assert_allclose(m["loss"], m["recon_mse"] + m["quantizer_loss"] + 0.5 * m["perceptual_loss"],
                             rtol=1e-5)
  assert set(state.params) == {"tokenizer", "discriminator"}     # VGG: a step argument, not trained/saved
  # Without GAN the discriminator's params, EMA and optimizer state are carried through untouched (AdamW's
  # weight decay would otherwise shrink them); the tokenizer's moved.
  init = jax.device_get(run.init_state(0))
  after = jax.device_get(state)
  for tree in ("params", "ema_params"):
    jax.tree.map(np.testing.assert_array_equal, getattr(after, tree)["discriminator"],
                 getattr(init, tree)["discriminator"])
  jax.tree.map(np.testing.assert_array_equal, after.opt_state.inner_states["d"], init.opt_state.inner_states["d"])
  assert not np.array_equal(after.params["tokenizer"]["params"]["to_pixels"]["kernel"],
                            init.params["tokenizer"]["params"]["to_pixels"]["kernel"])
  n_vgg = sum(x.size for x in jax.tree.leaves(run.parts["vgg"]))
  assert n_vgg > 1e7 and sum(x.size for x in jax.tree.leaves(state.params)) < n_vgg
  # The AOT path (vidgen compile) lowers the step with the VGG weights as arguments, not baked constants.
  from vidgen_jax.parallel import aot
  args = aot.lower_train_step(run).args_info[0]
  assert len(args) == 3 and len(jax.tree.leaves(args[2])) == len(jax.tree.leaves(run.parts["vgg"]))


def test_perceptual_config_errors_name_the_problem(tmp_path):
  config = _config()
  config.loss.perceptual_weight = 1.0
  with pytest.raises(ConfigError, match="needs loss.perceptual_weights"):
    cvivit.validate(config, 1)
  config.loss.perceptual_weights = str(tmp_path / "missing.npz")
  with pytest.raises(ConfigError, match="no such file"):
    cvivit.validate(config, 1)
  config.data.image_size = 8
  with pytest.raises(ConfigError, match="at least 16 pixels"):
    cvivit.validate(config, 1)


def test_ema_vq_codebook_trained_by_the_step_dead_codes_reseeded_and_images_first():
  config = _config(image_steps=2)
  config.model.quantizer, config.model.codebook_size = "vq", 64
  config.train.reseed_dead_codes_after = 1
  cvivit.validate(config, 1)
  run = setup.build_run(config, devices=ONE)
  init = jax.device_get(run.init_state(0).params["tokenizer"]["quantizer_stats"]["vq"])
  state, ms = _steps(run, _batch(config), 3)
  vq = jax.device_get(state.params["tokenizer"]["quantizer_stats"]["vq"])
  assert vq["unused_steps"].dtype == np.int32 and vq["unused_steps"].max() <= 1   # re-seeded, not stale
  assert not np.allclose(vq["embed"], init["embed"])                              # the EMA moved codes
  np.testing.assert_allclose(np.linalg.norm(vq["embed"], axis=-1), 1.0, rtol=1e-5)  # cosine codebook
  ema = jax.device_get(state.ema_params["tokenizer"]["quantizer_stats"]["vq"])
  for k in vq:                                     # one codebook: the EMA params carry the same one
    np.testing.assert_array_equal(vq[k], ema[k])
  assert max(m["dead_codes"] for m in ms) > 0 and 0 < ms[-1]["codebook_usage"] <= 1
  assert [float(m["frames"]) for m in ms] == [1.0, 1.0, float(config.data.num_frames)]   # images, then clips
  assert all(np.isfinite(m["loss"]) for m in ms)
  config.train.image_steps = -1
  with pytest.raises(ConfigError, match="image_steps"):
    cvivit.validate(config, 1)


def test_bfloat16_compute_trains_float32_params_and_bad_dtypes_are_refused():
  f32, bf16 = _config(), _config(compute_dtype="bfloat16")
  batch = _batch(f32)
  assert cvivit.build_model(bf16).dtype == jnp.bfloat16
  (s32, m32), (s16, m16) = (_steps(setup.build_run(c, devices=ONE), batch, 2) for c in (f32, bf16))
  for leaf in jax.tree.leaves(s16.params) + jax.tree.leaves(s16.opt_state):
    assert not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == jnp.float32
  assert abs(m16[0]["recon_mse"] - m32[0]["recon_mse"]) < 0.05 * m32[0]["recon_mse"]              # same init, same batch
  bad_tok = _config(compute_dtype="float16")
  bad_gen = configs.load_config_file("configs/phenaki_shapes.py:runlocal=True")
  bad_gen.train.compute_dtype, bad_gen.tokenizer.workdir = "float16", "/a/tokenizer"
  for validate, bad in ((cvivit.validate, bad_tok), (phenaki.validate, bad_gen)):
    with pytest.raises(ConfigError, match="train.compute_dtype='float16'"):
      validate(bad, 1)


def test_sharded_step_equals_single_device():
  """Two C-ViViT steps with the GAN on (generator, discriminator with its gradient penalty, both optimizers)
  on 8 devices (batch over data x fsdp, parameters over fsdp x tensor) equal the same steps on one device."""
  def run_on(devices, mesh=None):
    c = configs.load_config_file("configs/cvivit_shapes.py:runlocal=True")
    c.train.gan_start = 0
    if mesh:
      c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
      c.sharding.preset = "fsdp_tensor"
    run = setup.build_run(c, devices=devices)
    return _steps(run, _batch(c), 2)

  one, m1 = run_on(ONE)
  eight, m8 = run_on(jax.devices(), (2, 2, 2))
  assert m1[-1]["disc_loss"] > 0 and all(np.isfinite(m["loss"]) for m in m1)
  for a, b in zip(m1, m8):
    np.testing.assert_allclose([a["loss"], a["disc_loss"]], [b["loss"], b["disc_loss"]], rtol=1e-5)
  assert_same_training_state(one, eight)
