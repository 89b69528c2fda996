"""Tests for video reading / writing, grids and conversions."""
import numpy as np
import pytest

from vidgen_jax.io import video as vio


def _gradient(t=8, h=64, w=64):
  ys, xs = np.mgrid[:h, :w]
  frames = [np.stack([(xs * 4 + 8 * i) % 256, ys * 4 % 256, np.full_like(xs, 128)], -1) for i in range(t)]
  return np.stack(frames).astype(np.uint8)


def _blocks(t=6, h=20, w=24, seed=0):
  """Few-colour video with identical consecutive frames (GIF writers like to merge those)."""
  rng = np.random.default_rng(seed)
  palette = rng.integers(0, 256, (12, 3), dtype=np.uint8)
  video = palette[rng.integers(0, 12, (t, h // 4, w // 4))].repeat(4, axis=1).repeat(4, axis=2)
  video[1] = video[0]
  video[-1] = video[-2]
  return video


def test_to_uint8():
  x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32)
  np.testing.assert_array_equal(vio.to_uint8(x), [0, 0, 128, 191, 255, 255])
  u = np.arange(5, dtype=np.uint8)
  assert vio.to_uint8(u) is u
  with pytest.raises(TypeError):
    vio.to_uint8(np.arange(3))


def test_npz_exact_round_trip(tmp_path):
  videos = np.random.default_rng(0).integers(0, 256, (3, 4, 8, 10, 3), dtype=np.uint8)
  prompts = ['a red circle moving left', 'a blue square rotating clockwise', 'ünïcode ok']
  path = tmp_path / 'out' / 'samples.npz'
  vio.write_videos(path, videos, prompts)
  with np.load(path) as data:
    assert set(data.files) == {'videos', 'prompts'}
    assert data['videos'].dtype == np.uint8
    np.testing.assert_array_equal(data['videos'], videos)
    assert data['prompts'].dtype.kind == 'U' and list(data['prompts']) == prompts


def test_gif_round_trip_exact_for_few_colours(tmp_path):
  video = _blocks()
  vio.write_video(tmp_path / 'a.gif', video, fps=8)
  back = vio.read_video(tmp_path / 'a.gif')
  assert back.shape == video.shape and back.dtype == np.uint8
  np.testing.assert_array_equal(back, video)


def test_gif_round_trip_within_palette_error(tmp_path):
  video = _gradient(t=4, h=48, w=40)
  vio.write_video(tmp_path / 'g.gif', video, fps=10)
  back = vio.read_video(tmp_path / 'g.gif')
  assert back.shape == video.shape
  assert np.abs(back.astype(int) - video).mean() < 6


def test_mp4_round_trip(tmp_path):
  video = _gradient()
  vio.write_video(tmp_path / 'a.mp4', video, fps=8)
  back = vio.read_video(tmp_path / 'a.mp4')
  assert back.shape == video.shape
  error = np.abs(back.astype(int) - video)
  assert error.mean() < 3 and error.max() < 40
  assert vio.read_video(tmp_path / 'a.mp4', max_frames=3).shape == (3, 64, 64, 3)


def test_mp4_small_and_odd_sizes(tmp_path):
  small = _blocks(t=3, h=20, w=24)
  vio.write_video(tmp_path / 'small.mp4', small)
  back = vio.read_video(tmp_path / 'small.mp4')
  assert back.shape == (3, 80, 96, 3) == vio.mp4_frames(small).shape  # upscaled x4 to a side >= 64
  assert np.abs(back.astype(int) - vio.upscale_nearest(small, 4)).mean() < 8
  odd = np.zeros((2, 65, 67, 3), np.uint8)
  vio.write_video(tmp_path / 'odd.mp4', odd)
  assert vio.read_video(tmp_path / 'odd.mp4').shape == (2, 66, 68, 3)


def test_make_grid_layout():
  videos = np.stack([np.full((2, 4, 5, 3), i + 1, np.uint8) for i in range(5)])
  grid = vio.make_grid(videos)  # 3 columns, 2 rows
  assert grid.shape == (2, 2 * 4 + 2, 3 * 5 + 2 * 2, 3)
  assert (grid[:, :4, :5] == 1).all() and (grid[:, 6:, 7:12] == 5).all()
  assert (grid[:, 4:6] == 0).all() and (grid[:, 6:, 14:] == 0).all()  # gap and the empty last cell
  assert vio.make_grid(videos, ncols=5, pad=1, pad_value=9).shape == (2, 4, 5 * 5 + 4, 3)
  assert vio.make_grid(videos, ncols=1).shape == (2, 5 * 4 + 4 * 2, 5, 3)


@pytest.mark.parametrize('ext', ['gif', 'mp4'])
def test_write_videos_grid(tmp_path, ext):
  videos = np.stack([_blocks(t=4, h=16, w=16, seed=i) for i in range(4)])
  path = tmp_path / f'grid.{ext}'
  vio.write_videos(path, videos, [f'prompt {i}' for i in range(4)], fps=4, scale=2)
  back = vio.read_video(path)
  assert back.shape == (4, 2 * 34, 2 * 34, 3)
  if ext == 'gif':
    np.testing.assert_array_equal(back, vio.upscale_nearest(vio.make_grid(videos), 2))


def test_write_videos_accepts_floats(tmp_path):
  videos = np.zeros((2, 3, 8, 8, 3), np.float32) - 1
  vio.write_videos(tmp_path / 'f.npz', videos, ['a', 'b'])
  with np.load(tmp_path / 'f.npz') as data:
    assert data['videos'].dtype == np.uint8 and data['videos'].max() == 0


def test_bad_extension_and_arguments(tmp_path):
  videos = np.zeros((1, 2, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=r"\.avi.*\.gif.*\.mp4.*\.npz"):
    vio.write_videos(tmp_path / 'x.avi', videos, ['p'])
  with pytest.raises(ValueError, match=r"\.png"):
    vio.write_video(tmp_path / 'x.png', videos[0])
  with pytest.raises(ValueError, match='prompts'):
    vio.write_videos(tmp_path / 'x.npz', videos, ['p', 'q'])
  with pytest.raises(ValueError, match='shape'):
    vio.write_video(tmp_path / 'x.gif', videos[0, 0])


def test_frames_strip():
  video = np.stack([np.full((3, 4, 3), i, np.uint8) for i in range(5)])
  strip = vio.frames_strip(video)
  assert strip.shape == (3, 20, 3)
  for i in range(5):
    assert (strip[:, 4 * i:4 * i + 4] == i).all()


def test_read_errors(tmp_path):
  bad = tmp_path / 'bad.gif'
  bad.write_bytes(b'GIF89a not really a gif')
  with pytest.raises(Exception):
    vio.read_video(bad)
  with pytest.raises(Exception):
    vio.read_video(tmp_path / 'missing.mp4')
