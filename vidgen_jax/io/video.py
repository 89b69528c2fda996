"""Video files and sample grids: GIF through Pillow, MP4 through PyAV (libx264), bundles of samples as .npz.

A video is a numpy array (T, H, W, 3), RGB, uint8; `to_uint8` converts model outputs in [-1, 1].

* `read_video` decodes GIFs with Pillow (every frame composited and converted to RGB) and everything else
  (.mp4, .webm, ...) with imageio v3's 'pyav' plugin.
* `write_video` writes one video. GIFs get one global 256-colour palette (median cut, no dithering), so
  videos with at most 256 distinct colours round-trip exactly, and are encoded with PyAV because Pillow
  merges identical consecutive frames (which would change the frame count). MP4s are H.264 (libx264,
  yuv420p, crf 15): videos whose shorter side is under 64 pixels are first upscaled by the smallest integer
  factor (nearest neighbour) that reaches 64, and an odd height or width is padded with one black row or
  column, so what is read back can be larger than what was written.
* `write_videos` writes a batch with its prompts: `.npz` holds `videos` uint8 (N, T, H, W, 3) and `prompts`
  (numpy str array) exactly; `.gif` / `.mp4` hold a grid of all videos (2 black pixels between tiles).
"""
import fractions
import math
import pathlib

import av
import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageSequence

VIDEO_EXTS = ('.gif', '.mp4')
WRITE_EXTS = VIDEO_EXTS + ('.npz',)
MP4_MIN_SIDE = 64
MP4_CRF = 15


def to_uint8(x):
  """uint8 copy of a video in [-1, 1] (clipped, rounded); uint8 input is returned unchanged."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
    raise TypeError(f'to_uint8 expects uint8 or floats in [-1, 1], got dtype {x.dtype}.')
  return np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check_video(video, ndim=4):
  video = to_uint8(video)
  if video.ndim != ndim or video.shape[-1] != 3 or 0 in video.shape:
    want = '(T, H, W, 3)' if ndim == 4 else '(N, T, H, W, 3)'
    raise ValueError(f'Expected a non-empty video array {want}, got shape {video.shape}.')
  return video


def _read_gif(path, max_frames):
  frames = []
  with Image.open(path) as image:
    for frame in ImageSequence.Iterator(image):
      if max_frames is not None and len(frames) >= max_frames:
        break
      frames.append(np.asarray(frame.convert('RGB')))
  return frames


def _read_pyav(path, max_frames):
  frames = []
  with iio.imopen(path, 'r', plugin='pyav') as file:
    for frame in file.iter(format='rgb24'):
      if max_frames is not None and len(frames) >= max_frames:
        break
      frames.append(frame)
  return frames


def read_video(path, max_frames=None):
  """uint8 (T, H, W, 3) RGB frames of a GIF / MP4 (at most `max_frames`); ValueError if it has none."""
  path = pathlib.Path(path)
  reader = _read_gif if path.suffix.lower() == '.gif' else _read_pyav
  frames = reader(path, max_frames)
  if not frames:
    raise ValueError(f'No frames decoded from {path}.')
  return np.stack(frames).astype(np.uint8, copy=False)


def upscale_nearest(video, factor):
  """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor."""
  factor = int(factor)
  if factor < 1:
    raise ValueError(f'Upscaling factor must be a positive integer, got {factor}.')
  if factor == 1:
    return video
  return np.repeat(np.repeat(video, factor, axis=-3), factor, axis=-2)


def _frame_rate(fps):
  if not fps > 0:
    raise ValueError(f'fps must be positive, got {fps}.')
  return fractions.Fraction(fps).limit_denominator(1000)


def _write_gif(path, video, fps):
  t, h, w, _ = video.shape
  quantized = Image.fromarray(video.reshape(t * h, w, 3)).quantize(
      colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
  indices = np.asarray(quantized).reshape(t, h, w)
  rgb = np.asarray(quantized.getpalette(), np.uint8).reshape(-1, 3)[:256]
  argb = np.zeros((256, 4), np.uint8)
  argb[:, 0] = 255
  argb[:len(rgb), 1:] = rgb
  with av.open(str(path), 'w', format='gif') as container:
    stream = container.add_stream('gif', rate=_frame_rate(fps))
    stream.width, stream.height, stream.pix_fmt = w, h, 'pal8'
    for frame in indices:
      container.mux(stream.encode(av.VideoFrame.from_ndarray((frame, argb), format='pal8')))
    container.mux(stream.encode())


def mp4_frames(video):
  """The frames `write_video` encodes into an MP4: upscaled to a side >= 64, padded to even H and W."""
  _, h, w, _ = video.shape
  video = upscale_nearest(video, max(1, math.ceil(MP4_MIN_SIDE / min(h, w))))
  _, h, w, _ = video.shape
  return np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def _write_mp4(path, video, fps):
  video = mp4_frames(video)
  _, h, w, _ = video.shape
  with av.open(str(path), 'w', format='mp4') as container:
    stream = container.add_stream('libx264', rate=_frame_rate(fps))
    stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
    stream.options = {'crf': str(MP4_CRF)}
    for frame in video:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')))
    container.mux(stream.encode())


def _suffix(path, allowed):
  suffix = pathlib.Path(path).suffix.lower()
  if suffix not in allowed:
    raise ValueError(f'Unsupported video file extension {suffix!r} in {str(path)!r}; use one of {allowed}.')
  return suffix


def write_video(path, video, fps=8):
  """Writes one (T, H, W, 3) video (uint8, or floats in [-1, 1]) to a .gif or .mp4 file."""
  suffix = _suffix(path, VIDEO_EXTS)
  video = _check_video(video)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  writer = _write_gif if suffix == '.gif' else _write_mp4
  writer(path, video, fps)


def make_grid(videos, ncols=None, pad=2, pad_value=0):
  """Tiles (N, T, H, W, C) videos row by row into one (T, H', W', C) video, `pad` pixels between tiles.

  `ncols` defaults to ceil(sqrt(N)); empty cells of the last row and the gaps are filled with `pad_value`.
  """
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[0] == 0:
    raise ValueError(f'Expected videos (N, T, H, W, C) with N >= 1, got shape {videos.shape}.')
  n, t, h, w, c = videos.shape
  ncols = math.ceil(math.sqrt(n)) if ncols is None else int(ncols)
  if ncols < 1:
    raise ValueError(f'ncols must be >= 1, got {ncols}.')
  ncols = min(ncols, n)
  nrows = math.ceil(n / ncols)
  grid = np.full((t, nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), pad_value, videos.dtype)
  for i, video in enumerate(videos):
    row, col = divmod(i, ncols)
    grid[:, row * (h + pad):row * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = video
  return grid


def write_videos(path, videos, prompts, fps=8, ncols=None, scale=1):
  """Writes a batch of videos with their prompts to .npz (exact arrays) or .gif / .mp4 (one grid video).

  `videos` is (N, T, H, W, 3), uint8 or floats in [-1, 1]; `prompts` is N strings. For a grid, `ncols` is
  passed to `make_grid` and `scale` upscales the grid by nearest neighbour.
  """
  suffix = _suffix(path, WRITE_EXTS)
  videos = _check_video(videos, ndim=5)
  prompts = [str(p) for p in prompts]
  if len(prompts) != videos.shape[0]:
    raise ValueError(f'Got {videos.shape[0]} videos but {len(prompts)} prompts.')
  if suffix == '.npz':
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, videos=videos, prompts=np.array(prompts, dtype=np.str_))
    return
  write_video(path, upscale_nearest(make_grid(videos, ncols=ncols), scale), fps=fps)


def frames_strip(video):
  """(T, H, W, C) video as one (H, T * W, C) image, frames left to right (for image loggers)."""
  video = np.asarray(video)
  t, h, w, c = video.shape
  return video.transpose(1, 0, 2, 3).reshape(h, t * w, c)
