"""BERT text encoder in Flax linen (inference only), with a loader for Hugging Face safetensors checkpoints.

Post-LayerNorm BERT: embeddings (word + absolute position + token type, LayerNorm), then per layer
multi-head self-attention -> Dense -> residual LayerNorm -> Dense-act-Dense -> residual LayerNorm. Covers
sentence-transformers' all-MiniLM-L6-v2 as well as bert-base style checkpoints. There is no dropout and no
pooler: the encoder returns the last hidden states.
"""
import dataclasses
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vidgen_jax.text import checkpoint

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form.
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face BERT config.json (defaults: bert-base-uncased)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0

  def __post_init__(self):
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {self.hidden_act!r}; expected one of {sorted(_ACTIVATIONS)}.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by "
          f"num_attention_heads {self.num_attention_heads}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "BertConfig":
    """From a parsed config.json; unknown keys (dropout rates, architectures, ...) are ignored."""
    position_type = d.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(f"Only absolute position embeddings are supported, not {position_type!r}.")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path) -> "BertConfig":
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    with open(path) as f:
      return cls.from_dict(json.load(f))


def _dense(features, name, dtype, precision):
  return nn.Dense(features, dtype=dtype, precision=precision, name=name)


def _layer_norm(config, name, dtype):
  # use_fast_variance=False: E[(x - mean)^2], as torch.nn.LayerNorm computes it.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False, name=name)


class BertSelfAttention(nn.Module):
  """Multi-head scaled dot-product self-attention with an additive (B, 1, 1, L) key bias."""
  config: BertConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    heads = (cfg.num_attention_heads, cfg.head_dim)
    q, k, v = (
        _dense(cfg.hidden_size, n, self.dtype, self.precision)(x).reshape(x.shape[:-1] + heads)
        for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision).astype(jnp.float32)
    scores = scores / math.sqrt(cfg.head_dim) + bias
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
    return out.reshape(x.shape[:-1] + (cfg.hidden_size,))


class BertLayer(nn.Module):
  """One post-LayerNorm transformer layer."""
  config: BertConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, bias):
    cfg = self.config
    h = BertSelfAttention(cfg, self.dtype, self.precision, name="attention")(x, bias)
    h = _dense(cfg.hidden_size, "attention_out", self.dtype, self.precision)(h)
    x = _layer_norm(cfg, "attention_norm", self.dtype)(x + h)
    h = _ACTIVATIONS[cfg.hidden_act](_dense(cfg.intermediate_size, "mlp_in", self.dtype, self.precision)(x))
    h = _dense(cfg.hidden_size, "mlp_out", self.dtype, self.precision)(h)
    return _layer_norm(cfg, "mlp_norm", self.dtype)(x + h)


class BertEncoder(nn.Module):
  """BERT encoder: `(input_ids, attention_mask[, token_type_ids]) -> last hidden states (B, L, hidden_size)`.

  Parameters are kept in float32; `dtype` is the compute dtype (softmax always runs in float32).
  """
  config: BertConfig
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None):
    cfg = self.config
    length = input_ids.shape[-1]
    if length > cfg.max_position_embeddings:
      raise ValueError(
          f"Sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}.")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    embed = lambda n, v: nn.Embed(v, cfg.hidden_size, dtype=self.dtype, name=n)  # noqa: E731
    x = embed("word_embeddings", cfg.vocab_size)(input_ids)
    x = x + embed("position_embeddings", cfg.max_position_embeddings)(jnp.arange(length)[None])
    x = x + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids)
    x = _layer_norm(cfg, "embeddings_norm", self.dtype)(x)
    mask = attention_mask.astype(bool)[:, None, None, :]
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    for i in range(cfg.num_hidden_layers):
      x = BertLayer(cfg, self.dtype, self.precision, name=f"layer_{i}")(x, bias)
    return x


def _hf_to_flax_table(config: BertConfig) -> dict[str, tuple[tuple[str, ...], str]]:
  """HF BertModel tensor name -> (flax param path, transform)."""
  table = {}

  def linear(hf, *path):
    table[f"{hf}.weight"] = (path + ("kernel",), checkpoint.TRANSPOSE)
    table[f"{hf}.bias"] = (path + ("bias",), checkpoint.IDENTITY)

  def norm(hf, *path):
    table[f"{hf}.weight"] = (path + ("scale",), checkpoint.IDENTITY)
    table[f"{hf}.bias"] = (path + ("bias",), checkpoint.IDENTITY)

  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    table[f"embeddings.{name}.weight"] = ((name, "embedding"), checkpoint.IDENTITY)
  norm("embeddings.LayerNorm", "embeddings_norm")
  for i in range(config.num_hidden_layers):
    hf, ours = f"encoder.layer.{i}", f"layer_{i}"
    for proj in ("query", "key", "value"):
      linear(f"{hf}.attention.self.{proj}", ours, "attention", proj)
    linear(f"{hf}.attention.output.dense", ours, "attention_out")
    norm(f"{hf}.attention.output.LayerNorm", ours, "attention_norm")
    linear(f"{hf}.intermediate.dense", ours, "mlp_in")
    linear(f"{hf}.output.dense", ours, "mlp_out")
    norm(f"{hf}.output.LayerNorm", ours, "mlp_norm")
  return table


def _normalise_hf_name(name: str) -> str | None:
  """Strips the `bert.` prefix of BertFor* checkpoints; None for tensors the encoder does not use."""
  if name.startswith("bert."):
    name = name[len("bert."):]
  if name.startswith(("pooler.", "cls.")) or name == "embeddings.position_ids":
    return None
  # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
  if ".LayerNorm." in name:
    name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(".LayerNorm.beta", ".LayerNorm.bias")
  return name


def load_bert_params(safetensors_path, config: BertConfig) -> dict:
  """Loads HF BERT weights (BertModel or BertFor* layout, with or without `bert.`) into `BertEncoder` params.

  `safetensors_path` is a .safetensors file, a sharded index .json, or a directory with either. The pooler,
  task heads and `embeddings.position_ids` are ignored. Raises KeyError listing missing/unexpected tensors.
  """
  raw = checkpoint.read_safetensors(safetensors_path)
  tensors = {}
  for name, value in raw.items():
    short = _normalise_hf_name(name)
    if short is not None:
      tensors[short] = value
  ids = jnp.zeros((1, 1), jnp.int32)
  expected = checkpoint.abstract_params(BertEncoder(config), ids, ids)
  return checkpoint.assign_params(tensors, _hf_to_flax_table(config), expected, source=str(safetensors_path))
