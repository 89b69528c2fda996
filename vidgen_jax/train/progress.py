"""Progress lines (steps/s, time left) and metric writers (TensorBoard via tensorboardX, plus JSON lines)."""
import json
import pathlib
import time

import numpy as np

from vidgen_jax.io import video as video_io


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
  """Steps/s over the steps since the first report (so compilation is excluded) and the time left."""

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self.t0 = None
    self.s0 = start_step
    self._rate = 0.0

  def update(self, step: int, metrics: dict) -> str:
    now = time.perf_counter()
    if self.t0 is None:
      self.t0, self.s0 = now, step
      eta = "?"
    else:
      self._rate = (step - self.s0) / max(now - self.t0, 1e-9)
      eta = format_seconds((self.total - step) / self._rate) if self._rate else "?"
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "finite")
    width = len(str(self.total))
    return f"step {step:>{width}}/{self.total} | {shown} | {self._rate:.2f} steps/s | ETA {eta}"

  def rate(self) -> float:
    return self._rate


class MetricWriter:
  """Scalars to TensorBoard and workdir/metrics.jsonl; sample videos as frame-strip images."""

  def __init__(self, workdir, jsonl_name: str = "metrics.jsonl"):
    from tensorboardX import SummaryWriter
    self.dir = pathlib.Path(workdir)
    self.tb = SummaryWriter(str(self.dir / "tb"))
    self.jsonl = open(self.dir / jsonl_name, "a")

  def scalars(self, step: int, metrics: dict, prefix: str = "train"):
    for k, v in metrics.items():
      self.tb.add_scalar(f"{prefix}/{k}", float(v), step)
    self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")
    self.jsonl.flush()

  def videos(self, step: int, videos: np.ndarray, prompts):
    for i, (v, p) in enumerate(zip(videos, prompts)):
      self.tb.add_image(f"samples/{i}: {p}", video_io.frames_strip(v), step, dataformats="HWC")
    self.tb.flush()

  def close(self):
    self.tb.close()
    self.jsonl.close()
