"""GAN terms of tokenizer training: discriminator/generator losses, the gradient penalty, VQGAN's adaptive weight.

All are pure functions of logits (any shape; every entry is one judged sample) or of gradient pytrees.

* Hinge pair (the reference's default): D: mean relu(1 − D(real)) + mean relu(1 + D(fake)); G: −mean D(fake).
* Non-saturating pair (the reference's `bce_*` losses, which crash there): D: mean softplus(−D(real)) +
  mean softplus(D(fake)) = BCE with real=1, fake=0; G: mean softplus(−D(fake)) = −mean log σ(D(fake)).
* `gradient_penalty(disc_fn, real, weight, form=...)`: see its docstring for the two forms.
* `adaptive_generator_weight(recon_grads, gan_grads)`: see its docstring for how to get both in one jitted step.
"""
import jax
import jax.numpy as jnp
import optax

GP_FORMS = ("r1", "one_centered")


def hinge_discriminator_loss(real_logits, fake_logits):
  """mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits):
  """−mean(D(fake)): the generator side of the hinge GAN (as in the reference and VQGAN)."""
  return -jnp.mean(fake_logits)


def non_saturating_discriminator_loss(real_logits, fake_logits):
  """Binary cross-entropy with labels real=1, fake=0: mean softplus(−D(real)) + mean softplus(D(fake))."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def non_saturating_generator_loss(fake_logits):
  """mean softplus(−D(fake)) = −mean log σ(D(fake)) (Goodfellow's non-saturating generator loss)."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def _per_sample_sq_norms(grads):
  """Squared L2 norm over every axis but the first: (N, ...) -> (N,)."""
  return jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1).astype(jnp.float32)), axis=-1)


def gradient_penalty(disc_fn, real, weight: float = 10.0, *, form: str = "r1"):
  """Penalty on the discriminator's input gradient g_i = ∂D(real)_i/∂real_i at the real samples.

  disc_fn maps real (N, ...) to logits whose entries depend only on their own sample (true of
  `FrameDiscriminator`: no batch statistics), so one backward pass of sum(D) gives every g_i. A sample is
  an entry of the leading axis: pass frames (N, H, W, C) for a per-frame penalty.

  * form="r1" (default): weight · mean_i ‖g_i‖² (Mescheder et al. 2018, zero-centred, the penalty of
    StyleGAN/MAGVIT; R1's usual γ/2 · E‖g‖² is weight = γ/2). Zero-centred penalties at the data are the
    ones with a local-convergence guarantee, so this is the default.
  * form="one_centered": weight · mean_i (‖g_i‖ − 1)², the reference phenaki-pytorch `gradient_penalty`
    (WGAN-GP's form, but evaluated at the real frames rather than at interpolates), for parity with it.
    The norm is sqrt(‖g‖² + 1e-12), so its gradient is finite at g = 0.

  Differentiable w.r.t. the discriminator's parameters closed over by disc_fn (a double backward pass),
  which is how the discriminator step trains on it.
  """
  if form not in GP_FORMS:
    raise ValueError(f"gradient_penalty form {form!r} unknown; choose one of {GP_FORMS}")
  grads = jax.grad(lambda x: jnp.sum(disc_fn(x)))(real)
  sq = _per_sample_sq_norms(grads)
  if form == "r1":
    return weight * jnp.mean(sq)
  return weight * jnp.mean(jnp.square(jnp.sqrt(sq + 1e-12) - 1.0))


def adaptive_generator_weight(recon_grads, gan_grads, *, max_weight: float = 1e4, eps: float = 1e-8):
  """clip(‖∇ recon‖ / (‖∇ gan‖ + eps), 0, max_weight) under stop_gradient (VQGAN's λ, Esser et al. 2021).

  recon_grads and gan_grads are the gradients of the reconstruction-side loss (the reference uses its
  perceptual loss; VQGAN uses reconstruction + perceptual) and of the generator's GAN loss w.r.t. the same
  weights: the decoder's last layer (for `CViViT`, params['to_pixels']['kernel']). Arrays or pytrees; the
  norm is the global L2 norm over all leaves. The reference clamps at 1e4 as here.

  Getting both in one jitted step: take the two gradients with two `jax.grad` calls on the tokenizer params
  (XLA shares what it can), or cheaper, one forward pass and two pullbacks (decode = params -> recon):

      recon, vjp = jax.vjp(decode, tok_params)
      g_rec_out = jax.grad(lambda r: recon_loss(r, video))(recon)       # ∂recon_loss/∂recon
      g_gan_out = jax.grad(lambda r: gen_loss(disc_params, r))(recon)    # ∂gan_loss/∂recon
      (g_rec,), (g_gan,) = vjp(g_rec_out), vjp(g_gan_out)
      lam = gan_weight * adaptive_generator_weight(last(g_rec), last(g_gan))
      g_tok = jax.tree.map(lambda a, b: a + lam * b, g_rec, g_gan)

  By linearity g_tok is the gradient of recon_loss + λ·gan_loss with λ held constant, which is what the
  stop-gradient means. (Losses that also depend on the params other than through recon, e.g. a quantizer
  aux loss, add their own gradient to g_rec.)
  """
  ratio = optax.tree.norm(recon_grads) / (optax.tree.norm(gan_grads) + eps)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


# The name `vidgen_jax.train.cvivit` calls it by.
adaptive_weight = adaptive_generator_weight
