"""GAN terms of tokenizer training and the frame discriminator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.losses import gan
from vidgen_jax.models.discriminator import FrameDiscriminator


def test_hinge_losses():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
  np.testing.assert_allclose(gan.hinge_discriminator_loss(real, fake), (0 + 0.5) / 2 + (0 + 1.5) / 2)
  np.testing.assert_allclose(gan.hinge_generator_loss(fake), 0.75)


def test_gradient_penalty_of_a_linear_discriminator():
  w = jnp.array([3.0, 4.0])                                   # ||w|| = 5 for every sample
  d = lambda x: x.reshape(x.shape[0], -1) @ w
  np.testing.assert_allclose(gan.gradient_penalty(d, jnp.ones((4, 2)), weight=10.0), 10 * (5 - 1) ** 2, rtol=1e-5)


def test_adaptive_weight_is_a_clipped_norm_ratio():
  np.testing.assert_allclose(gan.adaptive_weight(jnp.full((4,), 3.0), jnp.full((4,), 1.5)), 2.0, rtol=1e-5)
  assert float(gan.adaptive_weight(jnp.ones(3), jnp.zeros(3), max_weight=100.0)) == 100.0


@pytest.mark.parametrize("shape", [(16, 16), (16, 32)])
def test_discriminator_frames(shape):
  disc = FrameDiscriminator(base_dim=4)
  frames = jax.random.uniform(jax.random.key(0), (3,) + shape + (3,))
  params = disc.init(jax.random.key(1), frames)
  assert disc.apply(params, frames).shape == (3,)
  with pytest.raises(ValueError, match="frames"):
    disc.apply(params, frames[None])
