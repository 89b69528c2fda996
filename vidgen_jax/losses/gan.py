"""GAN losses of tokenizer training: hinge losses, the gradient penalty, and VQGAN's adaptive weight."""
import jax
import jax.numpy as jnp
import optax


def hinge_discriminator_loss(real_logits, fake_logits):
  """mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits):
  return -jnp.mean(fake_logits)


def gradient_penalty(disc_fn, real, weight: float = 10.0):
  """weight · mean over samples of (‖∂D(real)/∂real‖₂ − 1)² (the reference's penalty on real frames)."""
  grads = jax.grad(lambda x: jnp.sum(disc_fn(x)))(real)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1) + 1e-12)
  return weight * jnp.mean(jnp.square(norms - 1.0))


def adaptive_weight(recon_grad, gan_grad, max_weight: float = 1e4):
  """‖∇ recon‖ / ‖∇ gan‖ w.r.t. the same (last decoder) weights, clipped to max_weight, no gradient.

  The caller takes the gradients of the reconstruction(+perceptual) loss and of the generator's GAN loss
  separately (two backward passes in one jitted step), reads both at the decoder's output kernel, and adds
  weight · gan_grads to recon_grads: by linearity that is the gradient of recon + weight · gan."""
  ratio = optax.tree.norm(recon_grad) / (optax.tree.norm(gan_grad) + 1e-8)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))
