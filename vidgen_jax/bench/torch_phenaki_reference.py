"""Times phenaki-pytorch 0.5.0 on the CViViT-S and MaskGIT-S benchmarks; run as a script by `vidgen bench`.

  python torch_phenaki_reference.py cvivit  [--batch 4 --frames 9 --size 32 ...]
  python torch_phenaki_reference.py maskgit [--batch 4 --frames 9 --size 32 --text-len 16 --text-dim 384 ...]

Standalone on purpose (imports torch, never vidgen_jax), so the reference can live in another interpreter:
`vidgen bench cvivit-s --torch-python /path/to/venv/bin/python`. Prints one JSON object:
{"train_s": [...], "torch": version, "threads": n, "model": ...}.

One train step is what the reference's trainers do per step, minus logging and EMA:
  cvivit   zero_grad, `CViViT(video)` (use_vgg_and_gan=False: the reconstruction MSE; the LFQ runs in training
           mode), backward, gradient clipping at norm 1, AdamW.
  maskgit  zero_grad, `Phenaki(video_codebook_ids=..., text_embeds=...)` (cosine-schedule mask, condition
           dropout, MaskGit with text cross-attention, cross-entropy on the masked tokens), backward,
           gradient clipping at norm 1, AdamW on the MaskGit parameters.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_stubs import stub_torchvision  # noqa: E402  (the sibling file; this script never imports vidgen_jax)


def _times(fn, warmup, reps):
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def _stub_missing_optional_modules():
  """phenaki-pytorch imports torchvision (only its VGG uses it), beartype (decorators) and, through its T5
  helper, transformers (only to encode raw text; the benchmark passes text embeddings). Stand-ins for those
  that are missing, so a bare torch + einops + vector-quantize-pytorch environment can run the models
  (phenaki-pytorch installed with --no-deps). The T5 helper is always replaced: even with transformers
  installed it would fetch the T5 config from the Hugging Face hub to read its width (768)."""
  stub_torchvision()
  if importlib.util.find_spec("beartype") is None:
    bt = types.ModuleType("beartype")
    bt.beartype = lambda f=None, **kw: f if f is not None else (lambda g: g)
    sys.modules["beartype"] = bt
  t5 = types.ModuleType("phenaki_pytorch.t5")
  t5.DEFAULT_T5_NAME = "google/t5-v1_1-base"
  t5.get_encoded_dim = lambda name: 768

  def t5_encode_text(*args, **kwargs):
    raise RuntimeError("the benchmark passes text embeddings; raw text is not encoded")
  t5.t5_encode_text = t5_encode_text
  sys.modules["phenaki_pytorch.t5"] = t5
  # The package's __init__ also imports its trainers (accelerate, ema_pytorch, cv2, tqdm, PIL); the benchmark
  # needs only the model modules, so the package is registered bare and its submodules load on demand.
  spec = importlib.util.find_spec("phenaki_pytorch")
  if spec is not None and "phenaki_pytorch" not in sys.modules:
    package = types.ModuleType("phenaki_pytorch")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["phenaki_pytorch"] = package


def _cvivit(a):
  from phenaki_pytorch.cvivit import CViViT
  return CViViT(dim=a.dim, codebook_size=a.codebook_size, image_size=a.size, patch_size=a.patch_size,
                temporal_patch_size=a.temporal_patch_size, spatial_depth=a.depth, temporal_depth=a.depth,
                heads=a.heads, dim_head=a.dim_head, use_vgg_and_gan=False)


def _optimizer(torch, params):
  return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)


def _autocast(torch, a):
  """The forward pass under torch's CPU bfloat16 autocast with --bf16 (matmuls in bfloat16, parameters and
  optimizer float32), else a no-op context."""
  return torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)


def cvivit_step(torch, a):
  model = _cvivit(a)
  model.train()
  opt = _optimizer(torch, model.parameters())
  video = torch.rand(a.batch, 3, a.frames, a.size, a.size)   # the reference takes [0, 1] video, channels first

  def step():
    opt.zero_grad(set_to_none=True)
    with _autocast(torch, a):
      loss = model(video)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
  return step


def maskgit_step(torch, a):
  from phenaki_pytorch.phenaki_pytorch import MaskGit, Phenaki
  grid = (1 + (a.frames - 1) // a.temporal_patch_size, a.size // a.patch_size, a.size // a.patch_size)
  seq = grid[0] * grid[1] * grid[2]
  maskgit = MaskGit(dim=a.dim, num_tokens=a.codebook_size, max_seq_len=seq, depth=a.depth, heads=a.heads,
                    dim_head=a.dim_head, dim_context=a.text_dim)
  phenaki = Phenaki(maskgit=maskgit, cvivit=_cvivit(a), text_embed_dim=a.text_dim, cond_drop_prob=0.1)
  phenaki.train()
  opt = _optimizer(torch, maskgit.parameters())
  ids = torch.randint(0, a.codebook_size, (a.batch,) + grid)
  text = torch.randn(a.batch, a.text_len, a.text_dim)

  def step():
    opt.zero_grad(set_to_none=True)
    with _autocast(torch, a):
      loss = phenaki(video_codebook_ids=ids, text_embeds=text)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(maskgit.parameters(), 1.0)
    opt.step()
  return step


def main():
  p = argparse.ArgumentParser()
  p.add_argument("which", choices=("cvivit", "maskgit"))
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--frames", type=int, default=9)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--patch-size", type=int, default=4)
  p.add_argument("--temporal-patch-size", type=int, default=2)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--depth", type=int, default=None, help="default: 2 (cvivit spatial/temporal), 4 (maskgit)")
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--dim-head", type=int, default=32)
  p.add_argument("--codebook-size", type=int, default=4096)
  p.add_argument("--text-len", type=int, default=16)
  p.add_argument("--text-dim", type=int, default=384)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--bf16", action="store_true", help="forward under torch.autocast('cpu', bfloat16)")
  a = p.parse_args()
  if a.depth is None:
    a.depth = 2 if a.which == "cvivit" else 4

  import torch
  _stub_missing_optional_modules()
  torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  step = (cvivit_step if a.which == "cvivit" else maskgit_step)(torch, a)
  print(json.dumps({"train_s": _times(step, a.warmup, a.reps), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "model": a.which, "bf16_autocast": a.bf16}))


if __name__ == "__main__":
  main()
