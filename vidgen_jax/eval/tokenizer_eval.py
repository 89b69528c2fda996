"""`vidgen eval` on a C-ViViT workdir: reconstruction PSNR and codebook use on real clips of the eval prompts.

Real clips (never seen in training: a separate seed space) of the 24 seen and 14 held-out combinations are
encoded and decoded; reported per split: PSNR (dB, mean over clips, pixels in [0, 255]), and over all clips
the fraction of the codebook used, the code perplexity, and the evaluator's accuracy on the reconstructions
(does the tokenizer keep colour, shape and motion).
"""
import json
import pathlib

import jax
import numpy as np

from vidgen_jax.eval import conditional_eval, evaluator as ev, metrics, run_eval
from vidgen_jax.layers import quantizers
from vidgen_jax.models.cvivit import CViViT


def evaluate_workdir(workdir, num_samples: int = 4, seed: int = 0, step=None) -> dict:
  from vidgen_jax.sample.phenaki import TokenizerReconstructor
  rec = TokenizerReconstructor.from_workdir(workdir, step=step)
  cfg = rec.config
  pairs = run_eval.eval_prompts()
  prompts = [p for p, _ in pairs for _ in range(num_samples)]
  splits = np.array([s for _, s in pairs for _ in range(num_samples)])
  real = np.stack([run_eval.real_videos([p], seed * 1000 + i, cfg.data.image_size, cfg.data.num_frames)[0]
                   for i, p in enumerate(prompts)])
  recon = rec.reconstruct(real)
  with rec.run.context():
    _, indices, _ = jax.jit(lambda p, v: rec.run.model.apply(p, v, method=CViViT.encode))(
        rec.params["tokenizer"], real.astype(np.float32) / 255.0)
  vocab = rec.run.model.codebook_size if cfg.model.quantizer != "fsq" else int(np.prod(cfg.model.fsq_levels))
  scores = {}
  for split in ("seen", "heldout", "all"):
    keep = np.ones(len(prompts), bool) if split == "all" else splits == split
    scores[split] = {"psnr": conditional_eval.psnr(recon[keep], real[keep])}
  frames = min(ev.NUM_FRAMES, recon.shape[1])
  if frames == ev.NUM_FRAMES:
    scores["all"].update(metrics.accuracy(metrics.correctness(ev.default_evaluator().read(recon[:, :frames]),
                                                              prompts)))
  scores["all"]["codebook_usage"] = float(quantizers.codebook_usage(indices, vocab))
  scores["all"]["perplexity"] = float(quantizers.perplexity(indices, vocab))
  result = {"step": rec.step, "num_clips": len(prompts), "codebook_size": int(vocab), "scores": scores}
  out = pathlib.Path(workdir) / "eval" / f"step_{rec.step}_tokenizer"
  out.mkdir(parents=True, exist_ok=True)
  (out / "metrics.json").write_text(json.dumps(result, indent=1))
  from vidgen_jax.io import video as video_io
  video_io.write_videos(out / "pairs.gif", np.concatenate([real, recon], axis=3)[:16], prompts[:16], scale=2)
  result["dir"] = str(out)
  return result
