"""Tiny Unet3D configurations, inputs and fast random parameters shared by the U-Net tests."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.models.unet3d import Unet3D

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2)
TEXT_CFG = dict(TINY, cond_dim=6, attn_dim_head=8, text_token_dim=5)
B, T, S, L = 2, 4, 8, 3


def flat_params(tree):
  return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def abstract_params(model, *args, boxed=False, **kwargs):
  variables = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)
  return variables["params"] if boxed else nn.unbox(variables["params"])


def init_params(model, *args, select=lambda params: params, **kwargs):
  """model.init(key 0)'s unboxed params, or the part of them `select` picks, as one jitted program. An eager
  init compiles every initialiser op by op (about 10 s for the tiny U-Net); under jit XLA also drops the
  initialisers of every leaf that `select` leaves out (0.3 s for one leaf)."""
  return jax.jit(lambda key: select(nn.unbox(model.init(key, *args, **kwargs)["params"])))(jax.random.key(0))


def unet_inputs(seed=0, cond_dim=6, text_dim=5):
  rng = np.random.default_rng(seed)
  return dict(x=rng.uniform(-1, 1, (B, T, S, S, 3)).astype(np.float32), time=np.array([3, 977]),
              cond=rng.standard_normal((B, cond_dim)).astype(np.float32),
              tokens=rng.standard_normal((B, L, text_dim)).astype(np.float32))


def random_params(model, *args, seed=0, **kwargs):
  """Random params of the right tree (fast: no RNG compile); gains near 1, kernels ~ 1/sqrt(fan_in)."""
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "gamma":
      value = 1 + 0.2 * rng.standard_normal(shape)
    elif name == "kernel":
      value = rng.standard_normal(shape) / math.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.5 * rng.standard_normal(shape)
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(make, abstract_params(model, *args, **kwargs))


def setup_unet(cfg, seed=0, **model_kwargs):
  model = Unet3D(**cfg, **model_kwargs)
  inp = unet_inputs(seed)
  cond = inp["cond"] if cfg.get("cond_dim") else None
  kwargs = dict(text_tokens=inp["tokens"]) if cfg.get("text_token_dim") else {}
  params = random_params(model, inp["x"], inp["time"], cond, seed=seed, **kwargs)
  return model, params, inp
