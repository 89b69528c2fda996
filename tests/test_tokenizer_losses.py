"""Losses of C-ViViT tokenizer training: GAN terms, the frame discriminator, the frozen VGG16 perceptual loss."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.losses import gan, perceptual
from vidgen_jax.models.discriminator import FrameDiscriminator, block_widths


def _uniform(seed, shape):
  """Test inputs from numpy (jax.random would compile a sampler for every shape)."""
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


# ---- GAN losses ------------------------------------------------------------------------------------------

def test_hinge_losses():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
  np.testing.assert_allclose(gan.hinge_discriminator_loss(real, fake), (0 + 0.5) / 2 + (0 + 1.5) / 2)
  np.testing.assert_allclose(gan.hinge_generator_loss(fake), 0.75)


def test_non_saturating_losses():
  real, fake = jnp.array([0.0, 1.0]), jnp.array([-1.0, 0.0])
  sp = lambda v: np.log1p(np.exp(v))
  np.testing.assert_allclose(gan.non_saturating_discriminator_loss(real, fake),
                             (sp(0.0) + sp(-1.0)) / 2 + (sp(-1.0) + sp(0.0)) / 2, rtol=1e-6)
  np.testing.assert_allclose(gan.non_saturating_generator_loss(fake), -np.mean(np.log(1 / (1 + np.exp([1.0, 0.0])))),
                             rtol=1e-6)


def _linear_disc(w):
  return lambda x: x.reshape(x.shape[0], -1) @ w


def test_gradient_penalty_of_a_linear_discriminator():
  w = jnp.array([3.0, 4.0])                                   # dD/dx = w for every sample, ||w|| = 5
  real = _uniform(0, (4, 2))
  np.testing.assert_allclose(gan.gradient_penalty(_linear_disc(w), real, 10.0), 10 * 25.0, rtol=1e-6)
  np.testing.assert_allclose(gan.gradient_penalty(_linear_disc(w), real, 10.0, form="one_centered"),
                             10 * (5.0 - 1.0) ** 2, rtol=1e-5)
  # Differentiable w.r.t. the discriminator's weights (the double backward pass): d(10 ||w||^2)/dw = 20 w.
  np.testing.assert_allclose(jax.grad(lambda v: gan.gradient_penalty(_linear_disc(v), real, 10.0))(w), 20 * w,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="form"):
    gan.gradient_penalty(_linear_disc(w), real, form="wgan")


def test_gradient_penalty_is_per_sample():
  # D(x_i) = c_i . x_i with a different gradient per sample: mean of ||c_i||^2, not ||mean c||^2.
  c = jnp.array([[1.0, 0.0], [0.0, 3.0]])
  disc = lambda x: jnp.sum(x * c, axis=-1)
  np.testing.assert_allclose(gan.gradient_penalty(disc, jnp.ones((2, 2)), 1.0), (1 + 9) / 2, rtol=1e-6)


def test_adaptive_weight_is_a_clipped_norm_ratio():
  recon, adv = jnp.full((4,), 3.0), jnp.full((4,), 1.5)
  np.testing.assert_allclose(gan.adaptive_generator_weight(recon, adv), 2.0, rtol=1e-6)
  trees = ({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, {"a": jnp.array([1.0]), "b": jnp.zeros(1)})
  np.testing.assert_allclose(gan.adaptive_generator_weight(*trees), 5.0, rtol=1e-6)   # global norms 5 / 1
  assert float(gan.adaptive_generator_weight(jnp.ones(3), jnp.zeros(3), max_weight=100.0)) == 100.0
  assert float(gan.adaptive_generator_weight(recon, 1e-3 * adv, max_weight=10.0)) == 10.0
  # A constant of the step: no gradient flows into either gradient tree.
  g = jax.grad(lambda r, a: gan.adaptive_generator_weight(r, a), argnums=(0, 1))(recon, adv)
  assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in g)
  assert gan.adaptive_weight is gan.adaptive_generator_weight


# ---- discriminator ---------------------------------------------------------------------------------------

def _tiny_disc():
  return FrameDiscriminator(base_dim=2, attn_resolutions=(16,), attn_heads=2, attn_dim_head=4)


@pytest.fixture(scope="module")
def square_disc():
  disc = _tiny_disc()
  return disc, jax.jit(disc.init)(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("shape,last_map", [((16, 16), (4, 4)), ((16, 32), (4, 8))])
def test_discriminator_frames(shape, last_map, square_disc):
  disc = _tiny_disc()
  frames = _uniform(0, (3,) + shape + (3,))
  variables = square_disc[1] if shape == (16, 16) else jax.jit(disc.init)(jax.random.key(1), frames)
  params = variables["params"]
  assert block_widths(*shape, 2) == (8, 16, 32)
  assert "attn_0" in params and "attn_1" not in params          # attention where the block input side is 16
  assert params["to_logits"]["kernel"].value.shape == (last_map[0] * last_map[1] * 32, 1)
  assert nn.get_partition_spec(variables)["params"]["block_0"]["conv1"]["kernel"] == \
      jax.sharding.PartitionSpec("conv_h", "conv_w", "conv_in", "conv_out")
  apply = jax.jit(disc.apply)
  logits = apply(variables, frames)
  assert logits.shape == (3,) and bool(jnp.all(jnp.isfinite(logits)))
  # One logit per frame, leading axes kept; no batch statistics, so each logit sees only its own frame.
  both = apply(variables, jnp.stack([frames, frames.at[0].set(0.0)]))
  assert both.shape == (2, 3)
  np.testing.assert_allclose(both[0], logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(both[1, 1:], logits[1:], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(both[1, 0] - logits[0])) > 0


def test_discriminator_rejects_bad_inputs_and_trains_with_the_penalty(square_disc):
  disc, variables = square_disc
  frames = _uniform(1, (2, 16, 16, 3))
  with pytest.raises(ValueError, match="frames"):
    disc.apply(variables, frames[0])
  with pytest.raises(ValueError, match="4x4"):
    FrameDiscriminator(base_dim=2).init(jax.random.key(1), jnp.zeros((1, 2, 8, 3)))

  def d_loss(v):
    d_fn = lambda x: disc.apply(v, x)
    return gan.hinge_discriminator_loss(d_fn(frames), d_fn(1.0 - frames)) + gan.gradient_penalty(d_fn, frames)

  grads = jax.jit(jax.grad(d_loss))(variables)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0


# ---- VGG16 perceptual loss -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
  return perceptual.save_random_vgg16(tmp_path_factory.mktemp("vgg") / "vgg16_random.npz", seed=3)


@pytest.fixture(scope="module")
def vgg_params(vgg_file):
  return perceptual.load_vgg16_params(vgg_file)


def test_vgg_loader_round_trips_the_random_file(vgg_file, vgg_params, tmp_path):
  torch_layout = perceptual.random_vgg16_state_dict(seed=3)
  params = vgg_params["params"]
  assert sorted(params) == sorted(f"features_{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
  np.testing.assert_array_equal(params["features_5"]["kernel"], torch_layout["features.5.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["features_28"]["bias"], torch_layout["features.28.bias"])
  # The tree is exactly what the Flax module expects.
  abstract = jax.eval_shape(perceptual.VGG16Features().init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  expected = jax.tree.map(lambda a: a.shape, nn.meta.unbox(abstract))
  assert jax.tree.map(lambda a: a.shape, vgg_params) == expected
  # The safetensors path gives the same arrays.
  st = perceptual.load_vgg16_params(perceptual.save_random_vgg16(tmp_path / "vgg.safetensors", seed=3))
  jax.tree.map(np.testing.assert_array_equal, st, vgg_params)


def test_vgg_kernels_are_torch_cross_correlations(vgg_params):
  # relu(conv0) of the Flax module == torch's Conv2d (OIHW, NCHW, padding 1) on the original weights.
  x = _uniform(2, (1, 16, 16, 3))
  ours = jax.jit(perceptual.VGG16Features(taps=(1,)).apply)(vgg_params, x)[0]
  w = perceptual.random_vgg16_state_dict(seed=3)["features.0.weight"]
  ref = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
  np.testing.assert_allclose(ours, jax.nn.relu(ref).transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_vgg_loader_rejects_bad_files(tmp_path):
  arrays = perceptual.random_vgg16_state_dict()
  arrays["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
  bad = tmp_path / "bad.npz"
  np.savez(bad, **arrays)
  with pytest.raises(ValueError, match=r"features\.0\.weight has shape \(64, 3, 5, 5\), VGG16 needs \(64, 3, 3, 3\)"):
    perceptual.load_vgg16_params(bad)
  del arrays["features.28.bias"]
  arrays["features.1.weight"] = np.ones((64,), np.float32)          # e.g. a batch-norm VGG
  np.savez(bad, **arrays)
  with pytest.raises(ValueError, match=r"missing keys \['features.28.bias'\].*unexpected keys \['features.1.weight'\]"):
    perceptual.load_vgg16_params(bad)
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    perceptual.load_vgg16_params(tmp_path / "absent.npz")
  with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
    perceptual.load_vgg16_params(tmp_path / "weights.pt")
  (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="could not read"):
    perceptual.load_vgg16_params(tmp_path / "corrupt.safetensors")


def test_perceptual_loss_values(vgg_params):
  x, y = _uniform(4, (2, 16, 16, 3)), _uniform(5, (2, 16, 16, 3))
  # Leading axes kept: (pairs, images); pair 0 compares x with itself, pair 1 x with y.
  d = jax.jit(perceptual.perceptual_distance)(vgg_params, jnp.stack([x, x]), jnp.stack([x, y]))
  assert d.shape == (2, 2)
  assert float(jnp.max(jnp.abs(d[0]))) == 0.0
  assert bool(jnp.all(d[1] > 0)) and bool(jnp.all(d[1] <= 4.0))
  # The loss is the mean distance, and the VGG variables get no gradient while x does.
  loss, (g_vgg, g_x) = jax.jit(jax.value_and_grad(perceptual.perceptual_loss, argnums=(0, 1)))(vgg_params, x, y)
  np.testing.assert_allclose(loss, jnp.mean(d[1]), rtol=1e-5)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_vgg))
  assert bool(jnp.all(jnp.isfinite(g_x))) and float(jnp.linalg.norm(g_x)) > 0


def test_imagenet_normalisation_and_input_checks(vgg_params):
  gray = _uniform(6, (1, 4, 4, 1))
  norm = perceptual.imagenet_normalize
  np.testing.assert_allclose(norm(gray), norm(jnp.repeat(gray, 3, -1)))   # grayscale is compared as RGB
  mean_rgb = jnp.asarray(perceptual.IMAGENET_MEAN).reshape(1, 1, 1, 3)
  np.testing.assert_allclose(norm(mean_rgb), 0.0, atol=1e-7)
  np.testing.assert_allclose(norm(jnp.ones((1, 1, 1, 3)))[0, 0, 0],
                             (1 - np.array(perceptual.IMAGENET_MEAN)) / np.array(perceptual.IMAGENET_STD), rtol=1e-6)
  with pytest.raises(ValueError, match="RGB"):
    norm(jnp.zeros((1, 4, 4, 2)))
  x, y = _uniform(4, (2, 16, 16, 3)), _uniform(5, (2, 16, 16, 3))
  with pytest.raises(ValueError, match=">= 16"):
    perceptual.perceptual_loss(vgg_params, x[:, :8], y[:, :8])
  with pytest.raises(ValueError, match="same shape"):
    perceptual.perceptual_loss(vgg_params, x, y[:1])
