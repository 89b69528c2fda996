"""Frozen text encoders (MiniLM/BERT, T5) in Flax, loaded from Hugging Face safetensors checkpoints."""
from vidgen_jax.text.bert import BertConfig, BertEncoder, load_bert_params
from vidgen_jax.text.encoder import CachedTextEncoder, TextEncoder, load_text_encoder, masked_mean
from vidgen_jax.text.t5 import T5Config, T5Encoder, load_t5_params

__all__ = [
    "BertConfig",
    "BertEncoder",
    "CachedTextEncoder",
    "T5Config",
    "T5Encoder",
    "TextEncoder",
    "load_bert_params",
    "load_t5_params",
    "load_text_encoder",
    "masked_mean",
]
