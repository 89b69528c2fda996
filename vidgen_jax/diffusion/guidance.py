"""Classifier-free guidance: combine conditional and unconditional model outputs."""
import jax
import jax.numpy as jnp


def cfg_combine(cond_out, uncond_out, scale):
  """uncond + (cond − uncond)·scale (the reference's `null + (cond − null)·cond_scale`); scale 1 = cond."""
  return uncond_out + (cond_out - uncond_out) * scale


def _is_static_one(scale):
  return isinstance(scale, (int, float)) and float(scale) == 1.0


def _double_batch(tree):
  return jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a], axis=0), tree)


def make_guided_fn(apply_fn, cond_scale):
  """Wraps `apply_fn(x, t, null, *args, **kwargs) -> out` into a guided `fn(x, t, *args, **kwargs) -> out`.

  t is a scalar, (B,) or per-frame (B, T). `null` is a (B,) bool array: True drops the conditioning (null embedding) for that sample. Both passes run
  in ONE call on a doubled batch ([x, x], null = [False]*B + [True]*B); every leaf of args/kwargs (e.g. text
  embeddings and masks) must have the batch as leading axis and is doubled too. When cond_scale is a Python
  number equal to 1 only the conditional pass runs; otherwise cond_scale may be a traced scalar.
  """
  def guided(x, t, *args, **kwargs):
    batch = x.shape[0]
    if _is_static_one(cond_scale):
      return apply_fn(x, t, jnp.zeros((batch,), jnp.bool_), *args, **kwargs)
    null = jnp.concatenate([jnp.zeros((batch,), jnp.bool_), jnp.ones((batch,), jnp.bool_)])
    t = jnp.asarray(t)
    t = jnp.broadcast_to(t, (batch,)) if t.ndim == 0 else t
    out = apply_fn(*_double_batch((x, t)), null, *_double_batch(args), **_double_batch(kwargs))
    return cfg_combine(out[:batch], out[batch:], cond_scale)

  return guided
