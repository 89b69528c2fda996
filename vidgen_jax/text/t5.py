"""T5 encoder stack in Flax linen (inference only), with a loader for Hugging Face safetensors checkpoints.

T5 specifics, as in the original Mesh-TensorFlow model and HF's T5EncoderModel:
  * pre-norm blocks with an RMS layer norm (no mean subtraction, no bias) and a final norm after the stack;
  * no bias in any projection and no 1/sqrt(d) scaling of the attention logits (folded into the init);
  * a learned, bidirectional, bucketed relative position bias, owned by the first block and shared by all;
  * feed-forward 'relu' (T5 1.0) or 'gated-gelu' (T5 1.1 / mT5 / Flan-T5: gelu_new(x W0) * (x W1)).
"""
import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidgen_jax.layers.position import relative_positions, t5_relative_position_bucket
from vidgen_jax.text import checkpoint

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The encoder fields of a Hugging Face T5 config.json (defaults: t5-small)."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  pad_token_id: int = 0
  eos_token_id: int = 1

  def __post_init__(self):
    self._parse_feed_forward()  # Fail at construction on an unsupported feed_forward_proj.

  def _parse_feed_forward(self) -> tuple[bool, str]:
    parts = self.feed_forward_proj.split("-")
    gated = len(parts) > 1 and parts[0] == "gated"
    act = parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and not gated) or act not in _ACTIVATIONS:
      raise ValueError(
          f"Unsupported feed_forward_proj {self.feed_forward_proj!r}: expected 'ACT' or 'gated-ACT' with "
          f"ACT in {sorted(_ACTIVATIONS)}.")
    if self.feed_forward_proj == "gated-gelu":
      act = "gelu_new"  # HF's historical alias: T5 1.1 was trained with the tanh approximation.
    return gated, act

  @property
  def is_gated(self) -> bool:
    return self._parse_feed_forward()[0]

  @property
  def dense_act(self) -> str:
    return self._parse_feed_forward()[1]

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "T5Config":
    """From a parsed config.json (T5, mT5, Flan-T5); unknown keys are ignored."""
    model_type = d.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
      raise ValueError(f"Expected a T5 or mT5 config, got model_type {model_type!r}.")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path) -> "T5Config":
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    with open(path) as f:
      return cls.from_dict(json.load(f))


class T5LayerNorm(nn.Module):
  """RMS norm: x / sqrt(mean(x^2) + eps) * scale, statistics in float32, no mean subtraction or bias."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(self.dtype) * x32.astype(self.dtype)


def _dense(features, name, dtype, precision):
  return nn.Dense(features, use_bias=False, dtype=dtype, precision=precision, name=name)


class T5Attention(nn.Module):
  """Unscaled multi-head self-attention with an additive (B or 1, H, L, L) bias."""
  config: T5Config
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    heads = (cfg.num_heads, cfg.d_kv)
    inner = cfg.num_heads * cfg.d_kv
    q, k, v = (_dense(inner, n, self.dtype, self.precision)(x).reshape(x.shape[:-1] + heads) for n in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision).astype(jnp.float32) + bias
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
    return _dense(cfg.d_model, "o", self.dtype, self.precision)(out.reshape(x.shape[:-1] + (inner,)))


class T5FeedForward(nn.Module):
  """wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) when gated."""
  config: T5Config
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    act = _ACTIVATIONS[cfg.dense_act]
    if cfg.is_gated:
      h = act(_dense(cfg.d_ff, "wi_0", self.dtype, self.precision)(x))
      h = h * _dense(cfg.d_ff, "wi_1", self.dtype, self.precision)(x)
    else:
      h = act(_dense(cfg.d_ff, "wi", self.dtype, self.precision)(x))
    return _dense(cfg.d_model, "wo", self.dtype, self.precision)(h)


class T5Block(nn.Module):
  """Pre-norm block: x + Attn(RMSNorm(x)), then x + FF(RMSNorm(x))."""
  config: T5Config
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    eps = cfg.layer_norm_epsilon
    x = x + T5Attention(cfg, self.dtype, self.precision, name="attention")(
        T5LayerNorm(eps, self.dtype, name="attention_norm")(x), bias)
    return x + T5FeedForward(cfg, self.dtype, self.precision, name="mlp")(
        T5LayerNorm(eps, self.dtype, name="mlp_norm")(x))


class T5Encoder(nn.Module):
  """T5 encoder: `(input_ids, attention_mask) -> final-normed hidden states (B, L, d_model)`.

  Parameters are kept in float32; `dtype` is the compute dtype (norm statistics and softmax run in float32).
  """
  config: T5Config
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, input_ids, attention_mask):
    cfg = self.config
    x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, name="embed_tokens")(input_ids)
    mask = attention_mask.astype(bool)[:, None, None, :]
    # (1, H, L, L) bias from the bucketed key-minus-query offsets; computed once, used by every block.
    buckets = t5_relative_position_bucket(
        relative_positions(input_ids.shape[-1]), bidirectional=True,
        num_buckets=cfg.relative_attention_num_buckets, max_distance=cfg.relative_attention_max_distance)
    table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, name="relative_attention_bias")
    bias = jnp.transpose(table(buckets).astype(jnp.float32), (2, 0, 1))[None]
    bias = bias + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    for i in range(cfg.num_layers):
      x = T5Block(cfg, self.dtype, self.precision, name=f"block_{i}")(x, bias)
    return T5LayerNorm(cfg.layer_norm_epsilon, self.dtype, name="final_norm")(x)


def _hf_to_flax_table(config: T5Config) -> dict[str, tuple[tuple[str, ...], str]]:
  """HF T5 encoder tensor name (embedding as `shared.weight`) -> (flax param path, transform)."""
  keep, transpose = checkpoint.IDENTITY, checkpoint.TRANSPOSE
  table = {
      "shared.weight": (("embed_tokens", "embedding"), keep),
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
          (("relative_attention_bias", "embedding"), keep),
      "encoder.final_layer_norm.weight": (("final_norm", "scale"), keep),
  }
  mlp = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  for i in range(config.num_layers):
    hf, ours = f"encoder.block.{i}.layer", f"block_{i}"
    for proj in "qkvo":
      table[f"{hf}.0.SelfAttention.{proj}.weight"] = ((ours, "attention", proj, "kernel"), transpose)
    table[f"{hf}.0.layer_norm.weight"] = ((ours, "attention_norm", "scale"), keep)
    for proj in mlp:
      table[f"{hf}.1.DenseReluDense.{proj}.weight"] = ((ours, "mlp", proj, "kernel"), transpose)
    table[f"{hf}.1.layer_norm.weight"] = ((ours, "mlp_norm", "scale"), keep)
  return table


def load_t5_params(safetensors_path, config: T5Config) -> dict:
  """Loads the encoder of an HF T5EncoderModel / T5ForConditionalGeneration checkpoint as `T5Encoder` params.

  `safetensors_path` is a .safetensors file, a sharded index .json, or a directory with either. Decoder and
  LM-head tensors are ignored (and never read); the token embedding comes from `shared.weight`, else from
  `encoder.embed_tokens.weight`. Raises KeyError listing missing/unexpected encoder tensors.
  """
  tensors = checkpoint.read_safetensors(
      safetensors_path, keep=lambda n: n.startswith(("encoder.", "shared.")))
  embed_alias = tensors.pop("encoder.embed_tokens.weight", None)
  if "shared.weight" not in tensors and embed_alias is not None:
    tensors["shared.weight"] = embed_alias
  ids = jnp.zeros((1, 1), jnp.int32)
  expected = checkpoint.abstract_params(T5Encoder(config), ids, ids)
  return checkpoint.assign_params(tensors, _hf_to_flax_table(config), expected, source=str(safetensors_path))
