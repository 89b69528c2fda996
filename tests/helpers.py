"""Shared test utilities."""
import hashlib

import jax
import numpy as np

from vidgen_jax import configs


class HashTextEncoder:
  """A deterministic stand-in text encoder for fast trainer tests: tokens from a hash of each word."""

  name = "hash"

  def __init__(self, dim=16, max_length=12):
    self.dim, self.max_length = dim, max_length
    self.calls = 0

  def encode(self, texts):
    self.calls += 1
    toks = np.zeros((len(texts), self.max_length, self.dim), np.float32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, t in enumerate(texts):
      for j, w in enumerate(t.split()[: self.max_length]):
        seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little")
        toks[i, j] = np.random.default_rng(seed).standard_normal(self.dim)
        mask[i, j] = True
    return toks, mask

  def prefill(self, texts):
    pass


def tiny_config(**train):
  c = configs.load_config_file("configs/vdm_shapes.py:runlocal=True")
  for k, v in train.items():
    c.train[k] = v
  return c


def micro_config(image_size=8, **train):
  """tiny_config with one U-Net level and softmax attention only, on 2 frames of image_size (8; the
  moving-shapes data needs 16 when batches are drawn): about half the XLA:CPU compile time of tiny_config
  (~6 s a train step), for tests whose property does not depend on the model."""
  c = tiny_config(**train)
  c.model.dim_mults, c.model.use_sparse_linear_attn = (1,), False
  c.data.image_size, c.data.num_frames = image_size, 2
  return c


def assert_same_training_state(one, other, rtol=1e-4, atol=1e-5):
  """Two pytrees (parameters, or a whole train state) equal leaf by leaf, except what the last bias of a
  continuous position bias net (C-ViViT's spatial, MaskGIT's) holds: one logit offset per attention head,
  which softmax ignores, so its gradient is rounding noise and Adam's step on it is +-lr either way."""
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(one)),
                          jax.tree.leaves(jax.device_get(other))):
    name = jax.tree_util.keystr(path)
    if "pos_bias']['net_2']['bias']" not in name:
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
