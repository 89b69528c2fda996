"""The MaskGIT-S benchmark of DESIGN.md: MaskGIT num_tokens 4096, dim 128, depth 4, 4 heads of 32, text context
16 x 384; batch 4 of 320 tokens (the 5 x 8 x 8 grid of CViViT-S on 9 x 32 x 32 clips).

Times our real train step (`train/phenaki.train_step`, jitted and donated as training does): cosine-schedule
mask, condition dropout, MaskGIT with text cross-attention, cross-entropy on the masked tokens, backward,
AdamW with gradient clipping, EMA. The benchmark starts from token ids, as the reference's
`Phenaki(video_codebook_ids=...)` does: the step's frozen C-ViViT is replaced by the identity on ids (the
batch's 'video' holds them), so the tokenizer's encoder is not timed on either side. With torch and
phenaki-pytorch importable by `torch_python` the reference is timed in the same run
(`torch_phenaki_reference.py maskgit`) on the same shapes, and the ratio reported.
"""
import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.bench import common, cvivit_s, timing
from vidgen_jax.train import cvivit as cvivit_train
from vidgen_jax.train import phenaki
from vidgen_jax.train import setup as setup_lib

TEXT_DIM = 384


class _TextEmbeddings:
  """Stands in for the text encoder: the benchmark feeds random (B, L, 384) text embeddings directly."""

  def __init__(self, max_length):
    self.dim, self.max_length = TEXT_DIM, max_length


class TokenIdsTokenizer:
  """The frozen C-ViViT of the phenaki train step, reduced to the identity on token ids.

  The step tokenizes `batch['video']` as `tokenizer.apply(vars, video / 255, method=CViViT.encode)`; here
  'video' holds int token ids (B, t, h, w, 1) (5-D, as the step's batch sharding expects), which come back
  exactly (ids < 2^24 survive the float round trip). Everything else (grid, codebook size) is the wrapped
  C-ViViT's."""

  def __init__(self, cvivit):
    self._cvivit = cvivit

  def __getattr__(self, name):
    return getattr(self._cvivit, name)

  def apply(self, variables, video_unit, method=None):
    return None, jnp.round(video_unit * 255.0).astype(jnp.int32), None


def bench_configs(batch: int = 4, tiny: bool = False, compute_dtype: str = "float32"):
  """(phenaki config: configs/phenaki_shapes.py:variant=S at `batch`, one device; its tokenizer's config:
  CViViT-S). `tiny` shrinks everything (tests)."""
  tok_config = cvivit_s.bench_config(batch, tiny=tiny, compute_dtype=compute_dtype)
  c = common.load_config("phenaki_shapes.py:variant=S")
  c.model.critic = False
  c.train.image_steps = 0
  c.train.batch_size = batch
  c.train.compute_dtype = compute_dtype
  c.data.image_size, c.data.num_frames = tok_config.data.image_size, tok_config.data.num_frames
  if tiny:
    c.model.dim, c.model.depth, c.model.heads, c.model.dim_head = 16, 1, 2, 8
    c.text.max_length = 4
  return common.single_device(c), tok_config


@contextlib.contextmanager
def _token_id_tokenizer(tok_config):
  tokenizer = TokenIdsTokenizer(cvivit_train.build_model(tok_config))
  with mock.patch.object(phenaki, "load_tokenizer", lambda workdir: (tokenizer, tok_config, {})):
    yield tokenizer


def build_run(config, tok_config):
  with _token_id_tokenizer(tok_config):
    return setup_lib.build_run(config, text_encoder=_TextEmbeddings(config.text.max_length),
                               devices=jax.devices()[:1])


def _inputs(config, grid, vocab, seed=0):
  rng = np.random.default_rng(seed)
  b, L = config.train.batch_size, config.text.max_length
  return {"video": rng.integers(0, vocab, (b,) + tuple(grid) + (1,), dtype=np.int32),
          "text_tokens": rng.standard_normal((b, L, TEXT_DIM)).astype(np.float32),
          "text_mask": np.ones((b, L), bool)}


def reference_args(config, tok_config) -> list:
  m, t = config.model, tok_config.model
  return ["--batch", config.train.batch_size, "--frames", config.data.num_frames, "--size", config.data.image_size,
          "--patch-size", t.patch_size, "--temporal-patch-size", t.temporal_patch_size, "--dim", m.dim,
          "--depth", m.depth, "--heads", m.heads, "--dim-head", m.dim_head, "--codebook-size", t.codebook_size,
          "--text-len", config.text.max_length, "--text-dim", TEXT_DIM]


def jax_records(config, tok_config, reps=10, torch_python=None):
  run = build_run(config, tok_config)
  inputs = _inputs(config, run.parts["grid"], run.model.num_tokens)
  with run.context():
    state = run.init_state(0)
    floor = common.train_step_matmul_floor(run, state, inputs, torch_python=torch_python)
    seconds, flops, _ = common.time_train_step(run, state, inputs, reps=reps)
  return [common.record("maskgit-s/train_step", seconds, flops, batch=config.train.batch_size,
                        tokens=int(np.prod(run.parts["grid"])), **floor)]


def reference_records(config, tok_config, python=None, reps=5, timeout=1800):
  """The reference's train step seconds {'train_step': median, ...} via `python`, or (None, why)."""
  out, why = common.run_reference(cvivit_s.REFERENCE_SCRIPT,
                                  ["maskgit", "--reps", reps] + reference_args(config, tok_config)
                                  + common.reference_flags(config.train.compute_dtype), python, timeout)
  if out is None:
    return None, why
  return common.reference_seconds(out, train_step="train_s"), None


def run(reps=10, torch_python=None, with_reference=True, tiny=False, reference_reps=None, compute_dtype="float32"):
  """All records of `vidgen bench maskgit-s`, each a dict ready for one JSON line."""
  config, tok_config = bench_configs(tiny=tiny, compute_dtype=compute_dtype)
  peak = timing.matmul_peak_flops_per_s(n=256 if tiny else 2048, dtype=common.dtype(compute_dtype))
  records = jax_records(config, tok_config, reps=reps, torch_python=common.floor_python(
      torch_python, with_reference, compute_dtype))
  reference, why = (reference_records(config, tok_config, torch_python, reps=reference_reps or reps)
                    if with_reference else (None, "reference skipped"))
  return common.attach(records, peak, reference, why, cvivit_s.phenaki_label(reference),
                       compute_dtype=compute_dtype)
