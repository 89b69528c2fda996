"""`vidgen bench cvivit-s|maskgit-s`: the records, the configs of DESIGN.md, and the reference skipped without torch.

Runs tiny models (`tiny=True`) with one timed rep; the PyTorch reference is never imported here.
"""
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax import bench, cli
from vidgen_jax.bench import cvivit_s, maskgit_s

FIELDS = {"name", "median_s", "flops", "flops_per_s", "peak_matmul_flops_per_s", "fraction_of_peak", "backend",
          "reference", "batch", "matmul_floor_s", "matmul_floor_flops", "matmul_floor_conv_s"}


@pytest.fixture
def no_torch_python(tmp_path):
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
  fake.chmod(0o755)
  return str(fake)


def _check(records, name, no_torch_python):
  assert [r["name"] for r in records] == [name]
  rec = records[0]
  assert FIELDS <= set(rec)
  assert rec["flops"] > 0 and rec["median_s"] > 0 and rec["peak_matmul_flops_per_s"] > 0
  assert rec["flops_per_s"] == pytest.approx(rec["flops"] / rec["median_s"], rel=0.01)   # median_s is rounded
  assert "reference_median_s" not in rec and "speedup_vs_reference" not in rec
  # The step's dots alone: most of its FLOPs (the rest is elementwise), and time a real step cannot beat by much.
  assert 0.5 * rec["flops"] < rec["matmul_floor_flops"] <= rec["flops"] and rec["matmul_floor_s"] > 0
  assert 0 <= rec["matmul_floor_conv_s"] <= rec["matmul_floor_s"]
  assert "No module named 'torch'" in rec["reference"] and no_torch_python in rec["reference"]


def test_cvivit_s_records_without_torch(no_torch_python):
  _check(cvivit_s.run(reps=1, tiny=True, torch_python=no_torch_python), "cvivit-s/train_step", no_torch_python)


def test_maskgit_s_records_without_torch(no_torch_python):
  records = maskgit_s.run(reps=1, tiny=True, torch_python=no_torch_python)
  _check(records, "maskgit-s/train_step", no_torch_python)
  assert records[0]["tokens"] == 2 * 2 * 2      # tiny: 3 frames of 8 x 8, patches 4, temporal patch 2


def test_configs_are_those_of_design_md():
  c = cvivit_s.bench_config()
  m = c.model
  assert (m.dim, m.quantizer, m.codebook_size, m.patch_size, m.temporal_patch_size) == (128, "lfq", 4096, 4, 2)
  assert (m.spatial_depth, m.temporal_depth, m.heads, m.dim_head) == (2, 2, 4, 32)
  assert (c.train.batch_size, c.data.num_frames, c.data.image_size) == (4, 9, 32)
  assert c.loss.gan_weight == 0 and c.loss.perceptual_weight == 0
  config, tok = maskgit_s.bench_configs()
  m = config.model
  assert (m.dim, m.depth, m.heads, m.dim_head, m.critic) == (128, 4, 4, 32, False)
  assert (config.train.batch_size, config.text.max_length, maskgit_s.TEXT_DIM) == (4, 16, 384)
  assert tok.model.codebook_size == 4096 and (tok.data.num_frames, tok.data.image_size) == (9, 32)


def test_reference_gets_the_same_shapes():
  args = cvivit_s.reference_args(cvivit_s.bench_config())
  opts = dict(zip(args[::2], args[1::2]))
  assert opts == {"--batch": 4, "--frames": 9, "--size": 32, "--patch-size": 4, "--temporal-patch-size": 2,
                  "--dim": 128, "--depth": 2, "--heads": 4, "--dim-head": 32, "--codebook-size": 4096}
  args = maskgit_s.reference_args(*maskgit_s.bench_configs())
  opts = dict(zip(args[::2], args[1::2]))
  assert (opts["--dim"], opts["--depth"], opts["--codebook-size"], opts["--text-len"], opts["--text-dim"]) == \
      (128, 4, 4096, 16, 384)
  assert (opts["--frames"], opts["--size"], opts["--patch-size"], opts["--temporal-patch-size"]) == (9, 32, 4, 2)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="this interpreter has torch")
def test_reference_script_accepts_the_arguments_and_skips_without_torch():
  """The default reference interpreter is this one: without torch the script gets past its argument parsing
  (so the arguments the benchmark passes are valid) and fails on `import torch`, which is reported."""
  result, why = cvivit_s.reference_records(cvivit_s.bench_config(tiny=True), reps=1)
  assert result is None and "No module named 'torch'" in why and sys.executable in why
  result, why = maskgit_s.reference_records(*maskgit_s.bench_configs(tiny=True, compute_dtype="bfloat16"), reps=1)
  assert result is None and "No module named 'torch'" in why                   # --bf16 parsed too


def test_bfloat16_bench_times_the_reference_under_autocast(tmp_path):
  """--compute-dtype bfloat16 reaches our model and the reference script (as --bf16); a stand-in reference
  interpreter answers with what it was asked."""
  fake = tmp_path / "python"
  fake.write_text('#!/bin/sh\ncase "$*" in *--bf16*) b=true;; *) b=false;; esac\n'
                  'echo "{\\"train_s\\": [0.5, 0.7, 0.6], \\"torch\\": \\"9.9\\", \\"threads\\": 2, '
                  '\\"bf16_autocast\\": $b}"\n')
  fake.chmod(0o755)
  rec, = cvivit_s.run(reps=1, tiny=True, torch_python=str(fake), compute_dtype="bfloat16")
  assert rec["compute_dtype"] == "bfloat16" and rec["reference_median_s"] == 0.6
  assert rec["reference"] == "phenaki-pytorch 0.5.0, torch 9.9, 2 threads, bf16 autocast"
  assert rec["speedup_vs_reference"] == pytest.approx(0.6 / rec["median_s"], rel=0.01)
  assert rec["speedup_bound_by_matmuls"] == pytest.approx(0.6 / rec["matmul_floor_s"], rel=0.01)
  assert cvivit_s.bench_config(tiny=True, compute_dtype="bfloat16").train.compute_dtype == "bfloat16"
  with pytest.raises(ValueError, match="float16"):
    cvivit_s.run(reps=1, tiny=True, torch_python=str(fake), compute_dtype="float16")


def test_torchvision_stand_in_serves_every_import_form_of_the_references():
  """Both reference scripts import `torch_stubs.py` beside them. Without torchvision (this environment) it must
  serve `import torchvision`, `import torchvision.transforms as T` with `T.ToTensor()` evaluated at import,
  and `from torchvision.utils import ...`, the forms phenaki-pytorch and video-diffusion-pytorch use, and
  refuse loudly if a benchmark ever calls a stand-in. An installed torchvision is hidden from the child
  interpreter (the stand-in is stdlib only), so this runs everywhere."""
  bench_dir = os.path.dirname(cvivit_s.__file__)
  code = ("import os, sys\n"
          "sys.path = [p for p in sys.path if not os.path.exists(os.path.join(p, 'torchvision'))]\n"
          f"sys.path.insert(0, {bench_dir!r}); import torch_stubs; torch_stubs.stub_torchvision()\n"
          "import torchvision, torchvision.transforms as T\n"
          "from torchvision import transforms, utils\n"
          "from torchvision.utils import make_grid, save_image\n"
          "from torchvision.datasets import ImageFolder\n"
          "T.ToTensor(); assert transforms is T and torchvision.models.vgg16 is not None\n"
          "try:\n  make_grid([])\nexcept RuntimeError as e:\n  print('refused:', e)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert "refused: torchvision is not installed: make_grid" in proc.stdout


def test_token_ids_survive_the_step_tokenization():
  ids = np.arange(4096, dtype=np.int32).reshape(4, 1024, 1)
  tokenizer = maskgit_s.TokenIdsTokenizer(None)
  _, out, _ = tokenizer.apply({}, jnp.asarray(ids).astype(jnp.float32) / 255.0)
  np.testing.assert_array_equal(np.asarray(out), ids)


def test_unknown_benchmark_name_errors_clearly(capsys):
  with pytest.raises(ValueError, match="unknown benchmark 'cvivit-xl'.*vdm-s, cvivit-s, maskgit-s"):
    bench.run("cvivit-xl")
  with pytest.raises(SystemExit):
    cli._parser().parse_args(["bench", "cvivit-xl"])
  assert "invalid choice: 'cvivit-xl'" in capsys.readouterr().err
  args = cli._parser().parse_args(["bench", "maskgit-s", "--no-reference", "--reps", "3"])
  assert (args.name, args.reps, args.no_reference) == ("maskgit-s", 3, True)


# ---- the layers rewritten for speed compute what their plain formulas compute ----

def _grads(f, *args):
  return jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("time_pad", [(2, 0), (1, 1)])
def test_peg_conv_and_its_gradients_equal_the_plain_taps(time_pad):
  from vidgen_jax.layers import transformer as tf
  x = jax.random.normal(jax.random.key(0), (2, 4, 3, 5, 6))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 6))
  pads = [(0, 0), time_pad, (1, 1), (1, 1), (0, 0)]
  plain = lambda x, k: tf.depthwise_conv3(jnp.pad(x, pads), k)
  fast = lambda x, k: tf.padded_depthwise_conv3(x, k, time_pad)
  np.testing.assert_allclose(jax.jit(fast)(x, kernel), jax.jit(plain)(x, kernel), rtol=1e-6, atol=1e-6)
  for got, want in zip(jax.jit(lambda x, k: _grads(fast, x, k))(x, kernel),
                       jax.jit(lambda x, k: _grads(plain, x, k))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shared_bias_gradient_is_the_sum_over_leading_axes():
  from vidgen_jax.layers.attention import add_bias
  logits = jax.random.normal(jax.random.key(0), (3, 2, 4, 5))
  for shape in [(2, 4, 5), (1, 2, 4, 5), (4, 5), (2, 1, 5), (3, 2, 4, 5)]:
    bias = jax.random.normal(jax.random.key(1), shape)
    np.testing.assert_array_equal(add_bias(logits, bias), logits + bias)
    for got, want in zip(_grads(add_bias, logits, bias), _grads(jnp.add, logits, bias)):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 8), (5, 8, 8), (3, 4), (1, 2, 3)])
def test_position_bias_mlp_on_distinct_offsets_equals_it_on_every_pair(shape):
  from vidgen_jax.layers import position
  from vidgen_jax.layers.transformer import relative_offset_table
  features, index = relative_offset_table(shape)
  pairs = position.relative_log_positions(shape)
  np.testing.assert_array_equal(features[index], pairs)


def test_flat_dense_is_dense():
  import flax.linen as nn
  from vidgen_jax.layers import attention
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 7))
  flat = attention.dense(5, ("embed", None), name="d", use_bias=True, flat=True)
  params = nn.meta.unbox(flat.init(jax.random.key(1), x))
  np.testing.assert_array_equal(flat.apply(params, x), nn.Dense(5).apply(params, x))
