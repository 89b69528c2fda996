"""Long and multi-prompt videos from a fixed-window model: the window plan, and the loop that runs it.

A model trained on `window` frames makes longer videos autoregressively (Ho et al. 2022, sec. 3.2): the
first window is sampled freely (or conditioned on given frames, for video prediction), then every further
window keeps the last `overlap` frames made so far as known frames and samples `window - overlap` new ones.
A story gives each new frame the prompt of the segment it falls in (`segment_frames` frames per prompt), so
each scene starts from the last frames of the previous one.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
  start: int        # index of the window's first frame in the long video
  known: int        # leading frames of the window that are known (taken from the video so far)
  prompt: int       # index of the prompt that conditions this window
  end: int          # the window's new frames are [start + known, end); later ones it samples are dropped


def plan_windows(num_frames: int, window: int, overlap: int, *, given: int = 0, segment_frames: int | None = None,
                 num_prompts: int = 1) -> list[Window]:
  """Windows that together produce `num_frames` frames, in sampling order.

  given: frames known before sampling starts (video prediction); the first window then knows them.
  segment_frames: frames per prompt of a story (prompt i covers frames [i*segment_frames, (i+1)*...)); a
  window uses the prompt of its first new frame and keeps no new frame past that prompt's segment (the next
  window, with the next prompt, makes those), so every frame is made under its own segment's prompt whatever
  the overlap. Without it every window uses prompt 0.
  The last window is shifted back so that it ends exactly at num_frames (it then knows more frames).
  """
  if window < 1 or not 0 <= overlap < window:
    raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window} overlap={overlap}")
  if not 0 <= given < num_frames:
    raise ValueError(f"given={given} frames must be fewer than num_frames={num_frames}")
  if given > window:
    raise ValueError(f"{given} given frames do not fit in the model's {window}-frame window")
  if num_frames > window and overlap == 0:
    raise ValueError("overlap must be > 0 to extend beyond one window (windows would be independent)")
  if segment_frames is not None:
    if segment_frames < 1:
      raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
    if num_frames > segment_frames * num_prompts:
      raise ValueError(f"{num_prompts} prompts x {segment_frames} segment frames cover fewer than {num_frames}")

  def prompt_of(frame):
    return 0 if segment_frames is None else min(frame // segment_frames, num_prompts - 1)

  def segment_end(frame):
    return num_frames if segment_frames is None else (frame // segment_frames + 1) * segment_frames

  windows, made = [], given
  while made < num_frames:
    start = min(max(made - overlap, 0) if windows else 0, max(num_frames - window, 0))
    known = made - start if windows else given
    end = min(start + window, num_frames, segment_end(made))
    windows.append(Window(start=start, known=known, prompt=prompt_of(made), end=end))
    made = end
  return windows


def run_windows(sample_window, first_frames, num_frames: int, window: int, overlap: int, *,
                segment_frames=None, num_prompts: int = 1):
  """Runs `plan_windows` with `sample_window(known_video, known_count, prompt_index, window_index)`.

  first_frames: (N, given, H, W, C) float array of given frames (given may be 0). sample_window receives a
  (N, window, H, W, C) array whose first `known_count` frames are known (the rest zeros) and returns the
  sampled (N, window, H, W, C) window; its known frames are kept from the input. Returns (N, num_frames, ...).
  """
  n, given = first_frames.shape[:2]
  frame_shape = first_frames.shape[2:]
  plan = plan_windows(num_frames, window, overlap, given=given, segment_frames=segment_frames,
                      num_prompts=num_prompts)
  video = np.zeros((n, num_frames) + frame_shape, np.float32)
  video[:, :given] = first_frames
  length = min(window, num_frames)
  for i, w in enumerate(plan):
    known = np.zeros((n, length) + frame_shape, np.float32)
    known[:, :w.known] = video[:, w.start:w.start + w.known]
    out = np.asarray(sample_window(known, w.known, w.prompt, i), np.float32)
    video[:, w.start + w.known:w.end] = out[:, w.known:w.end - w.start]
  return video
