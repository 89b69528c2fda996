"""Tests for the captioned video-folder source."""
import logging

import grain
import numpy as np
import pytest

from vidgen_jax.data import folder
from vidgen_jax.io import video as vio

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _stripes(t, h, w):
  """Three vertical colour bands (red | green | blue) of equal width."""
  video = np.zeros((t, h, w, 3), np.uint8)
  for band, colour in enumerate((RED, GREEN, BLUE)):
    video[:, :, band * w // 3:(band + 1) * w // 3] = colour
  return video


def _clip(root, name, video, caption=None):
  path = root / name
  path.parent.mkdir(parents=True, exist_ok=True)
  vio.write_video(path, video)
  if caption is not None:
    path.with_suffix('.txt').write_text(caption)
  return path


@pytest.fixture
def clips(tmp_path):
  _clip(tmp_path, 'a_wide.gif', _stripes(5, 32, 48), 'wide stripes\n')
  (tmp_path / 'b_bad.gif').write_bytes(b'GIF89a\x10\x00garbage')
  (tmp_path / 'b_bad.txt').write_text('corrupt')
  _clip(tmp_path, 'sub/c_tall.mp4', np.full((12, 96, 64, 3), 200, np.uint8), '  a grey\n  clip ')
  _clip(tmp_path, 'sub/d_nocaption.gif', _stripes(3, 16, 16))
  (tmp_path / 'notes.txt').write_text('not a clip')
  return tmp_path


def test_finds_captioned_clips_and_warns_about_others(clips, caplog):
  with caplog.at_level(logging.WARNING):
    src = folder.VideoFolder(clips, image_size=16, num_frames=8)
  assert len(src) == 3
  assert [p.rsplit('/', 1)[-1] for p in src.paths] == ['a_wide.gif', 'b_bad.gif', 'c_tall.mp4']
  assert 'd_nocaption.gif' in caplog.text
  assert 'VideoFolder(' in repr(src)


def test_shapes_crop_and_zero_padding(clips):
  src = folder.VideoFolder(clips, image_size=16, num_frames=8)
  ex = src[0]
  assert ex['video'].shape == (8, 16, 16, 3) and ex['video'].dtype == np.uint8
  assert ex['caption'] == 'wide stripes' and ex['num_frames'] == 5 and isinstance(ex['num_frames'], np.int32)
  # The centre 32x32 of the 48-wide clip is 8 red | 16 green | 8 blue columns, i.e. 4 | 8 | 4 at 16 px.
  frame = ex['video'][0].astype(int)
  np.testing.assert_array_equal(frame[:, :4], np.broadcast_to(RED, (16, 4, 3)))
  np.testing.assert_array_equal(frame[:, 4:12], np.broadcast_to(GREEN, (16, 8, 3)))
  np.testing.assert_array_equal(frame[:, 12:], np.broadcast_to(BLUE, (16, 4, 3)))
  np.testing.assert_array_equal(ex['video'][5:], 0)


def test_last_frame_padding_and_truncation(clips):
  src = folder.VideoFolder(clips, image_size=16, num_frames=8, pad='last')
  ex = src[0]
  assert ex['num_frames'] == 5
  for t in range(5, 8):
    np.testing.assert_array_equal(ex['video'][t], ex['video'][4])
  tall = src[2]  # 12 frames of 96x64 grey, truncated to 8
  assert tall['video'].shape == (8, 16, 16, 3) and tall['num_frames'] == 8
  assert tall['caption'] == 'a grey clip'
  assert np.abs(tall['video'].astype(int) - 200).max() <= 4


def test_corrupt_file_is_skipped_and_reported(clips, caplog):
  src = folder.VideoFolder(clips, image_size=16, num_frames=4)
  bad = str(clips / 'b_bad.gif')
  with caplog.at_level(logging.WARNING, logger='vidgen_jax.data.folder'):
    ex = src[1]
  assert bad in caplog.text and bad in src.bad_files
  assert ex['caption'] == 'a grey clip'  # deterministic replacement: the next readable index
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='vidgen_jax.data.folder'):
    again = src[1]
  assert bad not in caplog.text  # reported once
  np.testing.assert_array_equal(again['video'], ex['video'])


def test_grain_batches_folder(clips):
  src = folder.VideoFolder(clips, image_size=16, num_frames=4)
  batch = grain.MapDataset.source(src).batch(3)[0]
  assert batch['video'].shape == (3, 4, 16, 16, 3)
  assert list(batch['caption']) == ['wide stripes', 'a grey clip', 'a grey clip']


def test_all_corrupt_raises(tmp_path):
  for name in ('x.gif', 'y.mp4'):
    (tmp_path / name).write_bytes(b'\x00' * 64)
    (tmp_path / name).with_suffix('.txt').write_text('caption')
  src = folder.VideoFolder(tmp_path, image_size=8, num_frames=2)
  with pytest.raises(RuntimeError, match=str(tmp_path)):
    src[0]
  assert len(src.bad_files) == 2


def test_no_usable_files(tmp_path):
  with pytest.raises(ValueError, match='No usable video'):
    folder.VideoFolder(tmp_path, image_size=8, num_frames=2)
  _clip(tmp_path, 'only.gif', _stripes(2, 8, 8))
  with pytest.raises(ValueError, match='lack a caption'):
    folder.VideoFolder(tmp_path, image_size=8, num_frames=2)
  with pytest.raises(ValueError, match='not a directory'):
    folder.VideoFolder(tmp_path / 'missing', image_size=8, num_frames=2)


def test_exts_filter(clips):
  assert len(folder.VideoFolder(clips, image_size=8, num_frames=2, exts=('mp4',))) == 1
  assert len(folder.VideoFolder(clips, image_size=8, num_frames=2, exts='.GIF')) == 2


def test_fit_length_and_resize_crop():
  video = np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1).repeat(3, axis=-1)
  np.testing.assert_array_equal(folder.fit_length(video, 2)[:, 0, 0, 0], [0, 1])
  np.testing.assert_array_equal(folder.fit_length(video, 5)[:, 0, 0, 0], [0, 1, 2, 0, 0])
  np.testing.assert_array_equal(folder.fit_length(video, 5, 'last')[:, 0, 0, 0], [0, 1, 2, 2, 2])
  with pytest.raises(ValueError):
    folder.fit_length(video, 5, 'reflect')
  frame = np.zeros((10, 30, 3), np.uint8)
  frame[:, 10:20] = 255
  np.testing.assert_array_equal(folder.resize_crop(frame, 5), 255)
  assert folder.resize_crop(np.zeros((7, 5, 3), np.uint8), 20).shape == (20, 20, 3)
