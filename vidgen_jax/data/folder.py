"""A folder of captioned clips as a grain random-access source: `clip.gif` / `clip.mp4` plus `clip.txt`.

`VideoFolder(root, image_size, num_frames)` searches `root` recursively (sorted, so indices are stable) for
files with the given extensions that have a caption file of the same name with the suffix `.txt` beside
them. Files without a (non-empty) caption are listed in one warning and left out.

Every clip is decoded (at most `num_frames` frames), each frame resized with Pillow so that its shorter side
is `image_size` and centre-cropped to a square (one resampling of the centre square: area averaging when
shrinking, bilinear when enlarging), then padded to `num_frames` with black frames (`pad='zeros'`) or
copies of the last frame (`pad='last'`).

A file that cannot be decoded (corrupt, no frames) never stops training: the first failure is logged with
its path, the path is remembered in `bad_files`, and the example is replaced by the next readable index
((i + 1) % n, (i + 2) % n, ...), so the replacement is deterministic.

Examples are dicts: 'video' uint8 (num_frames, image_size, image_size, 3), 'caption' str, 'num_frames'
np.int32 (the number of decoded frames before padding).
"""
import logging
import operator
import pathlib

import numpy as np
from PIL import Image

from vidgen_jax.io import video as video_io

logger = logging.getLogger(__name__)

PAD_MODES = ('zeros', 'last')
_MAX_LISTED = 50


def _normalise_exts(exts):
  if isinstance(exts, str):
    exts = (exts,)
  exts = tuple('.' + e.lower().lstrip('.') for e in exts)
  if not exts:
    raise ValueError('exts must name at least one file extension.')
  return exts


def read_caption(path):
  """Caption text of a .txt file with its whitespace (newlines included) collapsed to single spaces."""
  return ' '.join(pathlib.Path(path).read_text(encoding='utf-8', errors='replace').split())


def find_captioned(root, exts):
  """Sorted ([(video_path, caption), ...], [video paths without a non-empty caption]) under `root`."""
  exts = _normalise_exts(exts)
  captioned, uncaptioned = [], []
  for path in sorted(pathlib.Path(root).rglob('*')):
    if path.suffix.lower() not in exts or not path.is_file():
      continue
    text_path = path.with_suffix('.txt')
    text = read_caption(text_path) if text_path.is_file() else ''
    if text:
      captioned.append((str(path), text))
    else:
      uncaptioned.append(str(path))
  return captioned, uncaptioned


def resize_crop(frame, image_size):
  """(H, W, 3) uint8 frame -> (image_size, image_size, 3): shorter side to image_size, centre square."""
  h, w = frame.shape[:2]
  side = min(h, w)
  left, top = (w - side) / 2, (h - side) / 2
  resample = Image.Resampling.BOX if side > image_size else Image.Resampling.BILINEAR
  image = Image.fromarray(frame)
  resized = image.resize((image_size, image_size), resample, box=(left, top, left + side, top + side))
  return np.asarray(resized)


def fit_length(video, num_frames, pad='zeros'):
  """Truncates or pads (black frames, or copies of the last frame) a (T, ...) video to num_frames."""
  if pad not in PAD_MODES:
    raise ValueError(f'Unknown pad mode {pad!r}; expected one of {PAD_MODES}.')
  video = video[:num_frames]
  missing = num_frames - len(video)
  if missing > 0:
    filler = np.zeros_like(video[:1]) if pad == 'zeros' else video[-1:]
    video = np.concatenate([video, np.repeat(filler, missing, axis=0)])
  return video


class VideoFolder:
  """grain random-access source over the captioned GIF / MP4 clips under a folder (see module doc)."""

  def __init__(self, root, image_size, num_frames, exts=('gif', 'mp4'), pad='zeros'):
    root = pathlib.Path(root)
    if not root.is_dir():
      raise ValueError(f'Video folder {str(root)!r} is not a directory.')
    if operator.index(image_size) < 1 or operator.index(num_frames) < 1:
      raise ValueError(f'image_size and num_frames must be >= 1, got {image_size} and {num_frames}.')
    if pad not in PAD_MODES:
      raise ValueError(f'Unknown pad mode {pad!r}; expected one of {PAD_MODES}.')
    self.root = str(root)
    self.image_size = int(image_size)
    self.num_frames = int(num_frames)
    self.exts = _normalise_exts(exts)
    self.pad = pad
    self.bad_files = set()
    self._items, uncaptioned = find_captioned(root, self.exts)
    if uncaptioned:
      listed = ', '.join(uncaptioned[:_MAX_LISTED])
      more = f' and {len(uncaptioned) - _MAX_LISTED} more' if len(uncaptioned) > _MAX_LISTED else ''
      logger.warning('Skipping %d video file(s) under %s without a caption .txt beside them: %s%s',
                     len(uncaptioned), self.root, listed, more)
    if not self._items:
      raise ValueError(f'No usable video under {self.root!r}: need files with extension {self.exts} and a '
                       f'same-named non-empty .txt caption ({len(uncaptioned)} file(s) lack a caption).')

  @property
  def paths(self):
    """Paths of the captioned clips, in index order."""
    return [path for path, _ in self._items]

  def __len__(self):
    return len(self._items)

  def _load(self, path):
    frames = video_io.read_video(path, max_frames=self.num_frames)
    return np.stack([resize_crop(frame, self.image_size) for frame in frames])

  def __getitem__(self, index):
    n = len(self._items)
    index = operator.index(index)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f'Index {index} out of range for {self!r}.')
    for step in range(n):
      path, text = self._items[(index + step) % n]
      if path in self.bad_files:
        continue
      try:
        video = self._load(path)
      except Exception as e:  # noqa: BLE001  Pillow and PyAV raise many types for unreadable files.
        logger.warning('Skipping unreadable video %s: %s: %s', path, type(e).__name__, e)
        self.bad_files.add(path)
        continue
      return {
          'video': fit_length(video, self.num_frames, self.pad),
          'caption': text,
          'num_frames': np.int32(len(video)),
      }
    raise RuntimeError(f'No readable video under {self.root!r}: all {n} captioned files failed to decode.')

  def __repr__(self):
    return (f'VideoFolder(root={self.root!r}, image_size={self.image_size}, num_frames={self.num_frames}, '
            f'exts={self.exts}, pad={self.pad!r}, len={len(self)})')
