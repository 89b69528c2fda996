"""T5 encoder: loading a tiny random HF-layout checkpoint, parity with transformers' FlaxT5EncoderModel."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from vidgen_jax.layers.position import relative_positions, t5_relative_position_bucket
from vidgen_jax.text import encoder as text_encoder
from vidgen_jax.text import t5

WORDS = (
    "a an the cat dog kitten puppy bird fish horse cow sheep man woman child people car bus train boat plane "
    "red green blue yellow black white small big old young fast slow happy sad runs walks jumps swims flies "
    "sits sleeps eats drinks plays on in under over near with by at of and to from street park beach river "
    "forest city house room table chair bed sky sun moon rain snow night day morning evening video of "
    "slowly quickly camera pans zooms timelapse close up wide shot"
).split()
PROMPTS = ["a cat sits on the table", "a red car drives fast", "timelapse of the city at night",
           "zzz unknown words here", ""]


def _tokenizer_json(path):
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
  for w in WORDS:
    vocab.setdefault(w, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  tok.save(str(path))
  return len(vocab)


def _make_checkpoint(directory, feed_forward_proj, *, extra_keys=False):
  """Writes config.json, tokenizer.json and model.safetensors (random f32, HF T5EncoderModel names)."""
  directory.mkdir(parents=True, exist_ok=True)
  n_vocab = _tokenizer_json(directory / "tokenizer.json")
  vocab_size = 128
  assert n_vocab <= vocab_size
  d_model, d_kv, d_ff, num_layers, num_heads, buckets = 32, 8, 64, 2, 4, 32
  config = {
      "architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": vocab_size, "d_model": d_model,
      "d_kv": d_kv, "d_ff": d_ff, "num_layers": num_layers, "num_decoder_layers": num_layers,
      "num_heads": num_heads, "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 16,
      "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6, "feed_forward_proj": feed_forward_proj,
      "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
      "tie_word_embeddings": False,
  }
  (directory / "config.json").write_text(json.dumps(config))
  rng = np.random.default_rng(0 if feed_forward_proj == "relu" else 1)
  normal = lambda shape, std: (rng.standard_normal(shape) * std).astype(np.float32)  # noqa: E731
  inner = num_heads * d_kv
  w = {"shared.weight": normal((vocab_size, d_model), 1.0),
       "encoder.final_layer_norm.weight": 1 + normal((d_model,), 0.1),
       "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": normal((buckets, num_heads), 1.0)}
  for i in range(num_layers):
    p = f"encoder.block.{i}.layer"
    for name, shape in (("q", (inner, d_model)), ("k", (inner, d_model)), ("v", (inner, d_model)),
                        ("o", (d_model, inner))):
      w[f"{p}.0.SelfAttention.{name}.weight"] = normal(shape, 1 / math.sqrt(shape[1]))
    w[f"{p}.0.layer_norm.weight"] = 1 + normal((d_model,), 0.1)
    w[f"{p}.1.layer_norm.weight"] = 1 + normal((d_model,), 0.1)
    ff = ("wi_0", "wi_1") if feed_forward_proj.startswith("gated") else ("wi",)
    for name in ff:
      w[f"{p}.1.DenseReluDense.{name}.weight"] = normal((d_ff, d_model), 1 / math.sqrt(d_model))
    w[f"{p}.1.DenseReluDense.wo.weight"] = normal((d_model, d_ff), 1 / math.sqrt(d_ff))
  if extra_keys:  # What a T5ForConditionalGeneration checkpoint adds; the encoder loader must ignore it.
    w["decoder.block.0.layer.0.SelfAttention.q.weight"] = normal((inner, d_model), 0.1)
    w["decoder.final_layer_norm.weight"] = np.ones((d_model,), np.float32)
    w["lm_head.weight"] = normal((vocab_size, d_model), 0.1)
  save_file(w, str(directory / "model.safetensors"), metadata={"format": "pt"})
  return w


@pytest.fixture(scope="module", params=["gated-gelu", "relu"])
def t5_dir(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(f"t5_{request.param}")
  _make_checkpoint(directory, request.param)
  return directory


class _JnpClipShim:
  """jax.numpy with the pre-0.8 `clip(a_min=, a_max=)` keywords transformers' Flax T5 still passes."""

  def __getattr__(self, name):
    return getattr(jnp, name)

  @staticmethod
  def clip(a, a_min=None, a_max=None, **kwargs):
    return jnp.clip(a, kwargs.pop("min", a_min), kwargs.pop("max", a_max), **kwargs)


def test_load_and_encode_shapes(t5_dir):
  enc = text_encoder.load_text_encoder("t5", t5_dir, max_length=8, chunk_size=4)
  assert (enc.dim, enc.max_length, enc.name) == (32, 8, f"t5:{t5_dir.name}")
  tokens, mask = enc.encode(PROMPTS)
  assert tokens.shape == (5, 8, 32) and tokens.dtype == np.float32
  assert mask.shape == (5, 8) and mask.dtype == bool
  ids, _ = enc.tokenize(PROMPTS)
  # "</s>" appended; padding with <pad>=0; truncation keeps the EOS; "" is just "</s>".
  assert ids[0, :7].tolist()[-1] == 1 and ids[0, 7] == 0 and mask[0].sum() == 7
  assert mask[2].sum() == 7
  assert ids[4, 0] == 1 and mask[4].sum() == 1
  long_ids, long_mask = enc.tokenize([" ".join(WORDS)])
  assert long_mask.all() and long_ids[0, -1] == 1
  assert np.all(tokens[~mask] == 0) and np.all(np.isfinite(tokens))
  assert np.abs(tokens[mask]).min() > 0
  empty_tokens, empty_mask = enc.encode([])
  assert empty_tokens.shape == (0, 8, 32) and empty_mask.shape == (0, 8)


def test_parity_with_transformers(t5_dir, monkeypatch):
  transformers = pytest.importorskip("transformers")
  from transformers.models.t5 import modeling_flax_t5  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(modeling_flax_t5, "jnp", _JnpClipShim())
  ref = transformers.FlaxT5EncoderModel.from_pretrained(str(t5_dir), from_pt=True)
  enc = text_encoder.load_text_encoder("t5", t5_dir, max_length=12, chunk_size=8)
  ids, mask = enc.tokenize(PROMPTS)
  want = np.asarray(ref(input_ids=ids, attention_mask=mask.astype(np.int32)).last_hidden_state)

  config = t5.T5Config.from_json(t5_dir / "config.json")
  params = t5.load_t5_params(t5_dir / "model.safetensors", config)
  got = np.asarray(t5.T5Encoder(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
  err = np.abs(got - want)[mask].max()
  assert err < 1e-5, err
  tokens, _ = enc.encode(PROMPTS)
  assert np.abs(tokens - want)[mask].max() < 1e-5
  # Padding must not change the valid positions.
  ids2, mask2 = text_encoder.load_text_encoder("t5", t5_dir, max_length=20, chunk_size=8).tokenize(PROMPTS)
  got2 = np.asarray(t5.T5Encoder(config).apply({"params": params}, jnp.asarray(ids2), jnp.asarray(mask2)))
  assert np.abs(got2[:, :12][mask] - got[mask]).max() < 1e-5


def test_loader_variants(tmp_path):
  """Embedding under encoder.embed_tokens, decoder keys ignored, clear errors for missing/extra tensors."""
  w = _make_checkpoint(tmp_path / "full", "gated-gelu", extra_keys=True)
  config = t5.T5Config.from_json(tmp_path / "full")
  assert config.is_gated and config.dense_act == "gelu_new" and config.relative_attention_max_distance == 16
  params = t5.load_t5_params(tmp_path / "full" / "model.safetensors", config)
  np.testing.assert_array_equal(params["embed_tokens"]["embedding"], w["shared.weight"])
  np.testing.assert_array_equal(params["block_1"]["attention"]["q"]["kernel"],
                                w["encoder.block.1.layer.0.SelfAttention.q.weight"].T)
  renamed = dict(w)
  renamed["encoder.embed_tokens.weight"] = renamed.pop("shared.weight")
  save_file(renamed, str(tmp_path / "renamed.safetensors"))
  params2 = t5.load_t5_params(tmp_path / "renamed.safetensors", config)
  jax.tree.map(np.testing.assert_array_equal, params, params2)

  broken = {k: v for k, v in w.items() if "block.1.layer.1.DenseReluDense.wi_1" not in k}
  broken["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = np.zeros((32, 4), np.float32)
  save_file(broken, str(tmp_path / "broken.safetensors"))
  with pytest.raises(KeyError, match=r"(?s)Missing \(1\).*wi_1.*Unexpected \(1\).*block\.1.*relative_attention"):
    t5.load_t5_params(tmp_path / "broken.safetensors", config)
  with pytest.raises(ValueError, match="Shape mismatch"):
    t5.load_t5_params(tmp_path / "full" / "model.safetensors", t5.T5Config.from_dict(
        {**json.loads((tmp_path / "full" / "config.json").read_text()), "d_ff": 48}))
  with pytest.raises(ValueError, match="feed_forward_proj"):
    t5.T5Config(feed_forward_proj="gated-foo")


def test_missing_files(tmp_path):
  _make_checkpoint(tmp_path / "m", "relu")
  (tmp_path / "m" / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*not|No model\.safetensors"):
    text_encoder.load_text_encoder("t5", tmp_path / "m")
  (tmp_path / "m" / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"tokenizer\.json not found in .*m"):
    text_encoder.load_text_encoder("t5", tmp_path / "m")
  with pytest.raises(FileNotFoundError, match="directory not found"):
    text_encoder.load_text_encoder("t5", tmp_path / "nope")
  with pytest.raises(ValueError, match="needs path="):
    text_encoder.load_text_encoder("t5")
  with pytest.raises(ValueError, match="Unknown text encoder kind"):
    text_encoder.load_text_encoder("clip", tmp_path / "m")


def test_relative_position_bucket_values():
  rel = jnp.asarray([0, -1, 1, -7, 7, -8, -20, -50, -127, -200, 200, 20])
  got = t5_relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
  # Negative offsets (key before query) use buckets 0..15, positive ones 16..31; exact below 8, then log-spaced:
  # 8 + floor(log(n / 8) / log(128 / 8) * 8), e.g. n=20 -> 8 + floor(2.64) = 10, n=50 -> 8 + floor(5.29) = 13.
  assert got.tolist() == [0, 1, 17, 7, 23, 8, 10, 13, 15, 15, 31, 26]
  uni = t5_relative_position_bucket(jnp.asarray([5, 0, -3, -20, -1000]), bidirectional=False)
  # Unidirectional: positive offsets clamp to 0; exact below 16; n=20 -> 16 + floor(log(1.25)/log(8)*16) = 17.
  assert uni.tolist() == [0, 0, 3, 17, 31]
  assert relative_positions(3).tolist() == [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]]
