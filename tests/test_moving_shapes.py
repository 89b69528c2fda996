"""Tests for the procedural moving-shapes data set."""
import itertools

import grain
import numpy as np
import pytest

from vidgen_jax.data import moving_shapes as ms


def _ink(video):
  """float (T, H, W) brightness of each pixel (max over channels)."""
  return video.max(axis=-1).astype(np.float64)


def _centres(video):
  ink = _ink(video)
  ys, xs = np.mgrid[:video.shape[1], :video.shape[2]]
  total = ink.sum(axis=(1, 2))
  return (ink * xs).sum(axis=(1, 2)) / total, (ink * ys).sum(axis=(1, 2)) / total


def _examples(split='all', image_size=32, num_frames=8, count=120, seed=0, motions=None):
  src = ms.MovingShapes(num_examples=count, image_size=image_size, num_frames=num_frames, seed=seed,
                        split=split, motions=motions)
  return [src[i] for i in range(count)]


def _params(motion, shape='square', colour='red', image_size=64, num_frames=8, seed=0):
  rng = np.random.default_rng(seed)
  return ms.sample_params(rng, (colour, shape, motion), image_size, num_frames)


def test_constants():
  assert list(ms.COLOURS) == ['red', 'green', 'blue', 'yellow', 'cyan', 'magenta', 'white']
  assert ms.COLOURS['yellow'] == (255, 255, 0) and ms.COLOURS['magenta'] == (255, 0, 255)
  assert ms.MOTIONS == (
      'moving left', 'moving right', 'moving up', 'moving down', 'moving up and left', 'moving up and right',
      'moving down and left', 'moving down and right', 'growing', 'shrinking', 'rotating clockwise',
      'rotating counterclockwise')
  assert set(ms.ROTATIONS) <= set(ms.MOTIONS)
  assert len(ms.combinations('all')) == 7 * (10 + 12 + 12)


def test_determinism_by_seed_and_index():
  a = ms.MovingShapes(seed=3)
  b = ms.MovingShapes(seed=3)
  for i in (0, 1, 99_999):
    x, y = a[i], b[i]
    assert x['caption'] == y['caption']
    np.testing.assert_array_equal(x['video'], y['video'])
    np.testing.assert_array_equal(x['params'], y['params'])
  assert a[5]['caption'] == a[5]['caption'] and (a[5]['video'] == a[5]['video']).all()
  assert not np.array_equal(a[0]['params'], a[1]['params'])


def test_different_seeds_and_splits_differ():
  base = _examples(seed=0, count=10)
  other = _examples(seed=1, count=10)
  assert any(x['caption'] != y['caption'] or not np.array_equal(x['video'], y['video'])
             for x, y in zip(base, other))
  assert any(not np.array_equal(x['params'], y['params']) for x, y in zip(base, other))


def test_example_types_and_labels():
  ex = ms.MovingShapes(image_size=32, num_frames=8)[7]
  assert ex['video'].dtype == np.uint8 and ex['video'].shape == (8, 32, 32, 3)
  assert isinstance(ex['caption'], str)
  for key in ('colour', 'shape', 'motion'):
    assert isinstance(ex[key], np.int32)
  assert ex['params'].dtype == np.float32 and ex['params'].shape == (len(ms.PARAM_KEYS),)
  assert ms.parse_caption(ex['caption']) == (ex['colour'], ex['shape'], ex['motion'])


def test_colours_exact_and_background_black():
  for ex in _examples(image_size=32, count=150):
    video, rgb = ex['video'], np.array(ms.COLOURS[ms.COLOUR_NAMES[ex['colour']]])
    lit = video.max(axis=-1) > 0
    assert 0 < lit.mean(axis=(1, 2)).min() and lit.mean() < 0.5  # mostly black background
    # Every pixel is coverage * colour: channels that are 0 in the colour stay 0, lit channels are equal.
    np.testing.assert_array_equal(video[..., rgb == 0], 0)
    lit_channels = video[..., rgb == 255]
    assert (lit_channels == lit_channels[..., :1]).all()
    # Each frame has interior pixels with the exact RGB.
    full = (video == rgb).all(axis=-1).sum(axis=(1, 2))
    assert full.min() >= 1, ex['caption']


@pytest.mark.parametrize('image_size', [16, 32, 64])
def test_object_inside_frame_every_frame(image_size):
  for ex in _examples(image_size=image_size, count=200 if image_size < 64 else 80, seed=image_size):
    video = ex['video']
    assert video.shape == (8, image_size, image_size, 3)
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
    assert border.max() == 0, ex['caption']
    assert (video.max(axis=(1, 2, 3)) > 0).all(), ex['caption']  # never empty


@pytest.mark.parametrize('num_frames', [1, 2, 5])
def test_any_num_frames(num_frames):
  ex = ms.MovingShapes(image_size=16, num_frames=num_frames)[0]
  assert ex['video'].shape == (num_frames, 16, 16, 3)


def test_image_size_128_renders():
  ex = ms.MovingShapes(image_size=128, num_frames=4)[2]
  assert ex['video'].shape == (4, 128, 128, 3)
  assert ex['video'][:, 0].max() == 0


@pytest.mark.parametrize('motion', list(ms.TRANSLATIONS))
def test_translation_direction(motion):
  ux, uy = ms.TRANSLATIONS[motion]
  for shape, seed in itertools.product(ms.SHAPES, range(3)):
    params = _params(motion, shape=shape, seed=seed)
    cx, cy = _centres(ms.render(params, 64, 8))
    dx, dy = np.diff(cx), np.diff(cy)
    for step, sign in ((dx, ux), (dy, uy)):
      if sign:
        assert (np.sign(step) == sign).all(), (motion, shape, step)
      else:
        assert np.abs(step).max() < 0.05, (motion, shape, step)
    travel = np.hypot(cx[-1] - cx[0], cy[-1] - cy[0]) / 64
    assert 0.24 <= travel <= 0.51, travel


@pytest.mark.parametrize('motion', ms.SIZE_MOTIONS)
def test_growing_and_shrinking(motion):
  for shape, seed in itertools.product(ms.SHAPES, range(3)):
    area = _ink(ms.render(_params(motion, shape=shape, seed=seed), 64, 8)).sum(axis=(1, 2))
    steps = np.diff(area)
    assert (steps > 0).all() if motion == 'growing' else (steps < 0).all(), (shape, area)
    ratio = max(area[0], area[-1]) / min(area[0], area[-1])
    assert 1.5 ** 2 * 0.85 < ratio < 2 ** 2 * 1.15, ratio  # area goes with the size squared


def _orientation(video, symmetry):
  """Per-frame angle (degrees, clockwise on screen) from the k-fold complex moment sum w * (z - c)^k."""
  ink = _ink(video)
  cx, cy = _centres(video)
  ys, xs = np.mgrid[:video.shape[1], :video.shape[2]]
  z = (xs[None] - cx[:, None, None]) + 1j * (ys[None] - cy[:, None, None])  # y down: +angle is clockwise
  moment = (ink * z ** symmetry).sum(axis=(1, 2))
  return np.rad2deg(np.unwrap(np.angle(moment)) / symmetry)


@pytest.mark.parametrize('motion', ms.ROTATIONS)
@pytest.mark.parametrize('shape', ms.ROTATING_SHAPES)
def test_rotation_direction(motion, shape):
  symmetry = {'square': 4, 'triangle': 3}[shape]
  sign = 1 if motion == 'rotating clockwise' else -1
  for seed in range(4):
    params = _params(motion, shape=shape, seed=seed)
    angles = _orientation(ms.render(params, 64, 8), symmetry)
    assert (np.sign(np.diff(angles)) == sign).all(), (seed, angles)
    turned = angles[-1] - angles[0]
    np.testing.assert_allclose(turned, params['angle1'] - params['angle0'], atol=6)
    assert 55 < abs(turned) < 125


def test_parameter_ranges():
  rng = np.random.default_rng(0)
  for combo in ms.combinations('all'):
    p = ms.sample_params(rng, combo, 32, 8)
    motion = ms.MOTIONS[combo[2]]
    small = min(p['size0'], p['size1'])
    assert ms.SIZE_RANGE[0] <= small <= ms.SIZE_RANGE[1]
    if motion in ms.SIZE_MOTIONS:
      assert 1.5 <= max(p['size0'], p['size1']) / small <= 2.0
    turn = abs(p['angle1'] - p['angle0'])
    assert (60 <= turn <= 120) if motion in ms.ROTATIONS else turn == 0
    distance = np.hypot(p['x1'] - p['x0'], p['y1'] - p['y0'])
    assert (0.25 <= distance <= 0.5 + 1e-9) if motion in ms.TRANSLATIONS else distance == 0


def test_params_vector_round_trip():
  params = _params('rotating clockwise', shape='triangle', colour='cyan')
  again = ms.params_from_vector(ms.params_to_vector(params), 'cyan', 'triangle', 'rotating clockwise')
  assert (again['colour'], again['shape'], again['motion']) == (params['colour'], params['shape'],
                                                                params['motion'])
  np.testing.assert_allclose([again[k] for k in ms.PARAM_KEYS], [params[k] for k in ms.PARAM_KEYS], rtol=1e-6)


def test_heldout_split():
  train, heldout = set(ms.combinations('train')), set(ms.combinations('heldout'))
  assert 12 <= len(heldout) <= 16
  assert heldout.isdisjoint(train)
  assert train | heldout == set(ms.combinations('all'))
  assert {ms.caption(*names) for names in ms.HELDOUT_COMBINATIONS} == set(ms.captions('heldout'))
  # Every colour, shape and motion still occurs in training...
  for position, names in enumerate((ms.COLOUR_NAMES, ms.SHAPES, ms.MOTIONS)):
    assert {combo[position] for combo in train} == set(range(len(names)))
  # ... and so does every pair of attributes inside each held-out triple.
  for combo in heldout:
    for keep in itertools.combinations(range(3), 2):
      assert any(all(t[k] == combo[k] for k in keep) for t in train), (combo, keep)


def test_splits_sample_only_their_combinations():
  heldout = set(ms.captions('heldout'))
  train_captions = {ex['caption'] for ex in _examples(split='train', count=400, image_size=16)}
  assert train_captions.isdisjoint(heldout)
  assert {ex['caption'] for ex in _examples(split='heldout', count=60, image_size=16)} <= heldout
  with pytest.raises(ValueError, match='split'):
    ms.MovingShapes(split='test')


def test_motions_restrict_the_combinations_sampled():
  only = _examples(split='train', count=60, image_size=16, motions='rotating clockwise, growing')
  assert {ms.MOTIONS[int(ex['motion'])] for ex in only} == {'rotating clockwise', 'growing'}
  assert all(ex['caption'].endswith(ms.MOTIONS[int(ex['motion'])]) for ex in only)
  rotating = ms.MovingShapes(image_size=16, motions=['rotating counterclockwise'])
  assert {ms.SHAPES[int(rotating[i]['shape'])] for i in range(40)} == set(ms.ROTATING_SHAPES)
  assert ms.parse_motions('') is None and ms.parse_motions(None) is None
  assert ms.parse_motions(' growing,growing ') == ('growing',)
  with pytest.raises(ValueError, match='unknown motion.*spinning.*choose from moving left'):
    ms.MovingShapes(motions='spinning')


def test_motion_weights_oversample_a_motion_and_keep_the_others():
  n = 3000
  even = ms.MovingShapes(num_examples=n, image_size=16, split='train')
  weighted = ms.MovingShapes(num_examples=n, image_size=16, split='train',
                             motion_weights='rotating clockwise=4, rotating counterclockwise = 4,growing=0')
  # Count the motions drawn without rendering (the combination comes first from each example's stream).
  def shares(src):
    drawn = [src._combos[src._draw(np.random.default_rng([src.seed, ms.SPLITS.index(src.split), i]))][2]
             for i in range(n)]
    return np.bincount(drawn, minlength=len(ms.MOTIONS)) / n
  combos = ms.combinations('train')
  per_motion = np.bincount([c[2] for c in combos], minlength=len(ms.MOTIONS))
  rot = [ms.MOTIONS.index(m) for m in ms.ROTATIONS]
  w = np.ones(len(ms.MOTIONS)); w[rot] = 4; w[ms.MOTIONS.index('growing')] = 0
  expected = per_motion * w / (per_motion * w).sum()
  np.testing.assert_allclose(shares(weighted), expected, atol=0.025)       # 3000 draws: ~4 sigma
  np.testing.assert_allclose(shares(even), per_motion / per_motion.sum(), atol=0.025)
  assert shares(weighted)[rot].sum() > 2.5 * shares(even)[rot].sum()
  # the examples agree with the drawn combination, and equal weights change nothing
  ex = weighted[7]
  assert ex['caption'] == ms.caption(*weighted._combos[weighted._draw(np.random.default_rng([0, 0, 7]))])
  same = ms.MovingShapes(num_examples=n, image_size=16, split='train', motion_weights='growing=1, shrinking=1')
  for i in (0, 11, 123):
    assert same[i]['caption'] == even[i]['caption'] and np.array_equal(same[i]['video'], even[i]['video'])
  assert ms.parse_motion_weights('') is None and ms.parse_motion_weights({'growing': 2}) == {'growing': 2.0}


@pytest.mark.parametrize('bad,match', [('spinning=2', 'unknown motion'), ('growing', 'motion=weight'),
                                       ('growing=-1', 'finite number >= 0'), ('growing=x', 'finite number'),
                                       ('growing=inf', 'finite number')])
def test_motion_weights_refuse_bad_input(bad, match):
  with pytest.raises(ValueError, match=match):
    ms.parse_motion_weights(bad)


def test_motion_weights_of_zero_for_every_motion_left_are_refused():
  with pytest.raises(ValueError, match='nothing left to draw'):
    ms.MovingShapes(motions='growing', motion_weights='growing=0')


def test_caption_round_trip_and_errors():
  for combo in ms.combinations('all'):
    assert ms.parse_caption(ms.caption(*combo)) == combo
  assert ms.caption('red', 'circle', 'moving left') == 'a red circle moving left'
  assert ms.parse_caption('  A Blue  square rotating clockwise. ') == (2, 1, 10)
  for bad in ('a red circle rotating clockwise', 'a purple circle moving left', 'red circle moving left',
              'a red circle moving sideways', ''):
    with pytest.raises(ValueError, match='caption'):
      ms.parse_caption(bad)
  with pytest.raises(ValueError, match='a purple circle'):
    ms.parse_caption('a purple circle moving left')


def test_too_small_image_raises():
  with pytest.raises(ValueError, match='image_size'):
    ms.MovingShapes(image_size=8)


def test_grain_batching():
  src = ms.MovingShapes(num_examples=10, image_size=16, num_frames=4)
  batch = grain.MapDataset.source(src).batch(4)[0]
  assert batch['video'].shape == (4, 4, 16, 16, 3) and batch['video'].dtype == np.uint8
  assert batch['params'].shape == (4, len(ms.PARAM_KEYS))
  assert batch['motion'].dtype == np.int32 and batch['caption'].shape == (4,)
  assert list(batch['caption']) == [src[i]['caption'] for i in range(4)]
  assert 'MovingShapes(' in repr(src) and len(src) == 10
  with pytest.raises(IndexError):
    src[10]


def test_opposite_motion_undoes_every_motion():
  for motion in ms.MOTIONS:
    back = ms.opposite_motion(motion)
    assert back != motion and ms.opposite_motion(back) == motion
    if motion in ms.TRANSLATIONS:
      assert np.array_equal(np.add(ms.TRANSLATIONS[motion], ms.TRANSLATIONS[back]), [0, 0])
  assert ms.opposite_motion("growing") == "shrinking"
  with pytest.raises(ValueError, match="Unknown motion"):
    ms.opposite_motion("jumping")


def test_render_draws_nothing_for_an_object_wholly_outside_the_frame():
  params = ms.sample_params(np.random.default_rng(0), ("red", "circle", "moving left"), 32, 8)
  for x in (-0.6, 1.6):
    outside = dict(params, x0=x, x1=x)
    assert not ms.render(outside, 32, 2).any()
  half = dict(params, x0=0.0, x1=0.0)            # centred on the left edge: half of it drawn
  assert 0 < ms.render(half, 32, 1).any(-1).sum() < ms.render(params, 32, 1).any(-1).sum()


def test_render_follows_given_trajectory_positions_and_blanks_vanished_objects():
  params = _params('growing', shape='circle', image_size=32)
  linear = ms.render(params, 32, 8)
  np.testing.assert_array_equal(ms.render(params, 32, 8, ms.linear_progress(8)), linear)
  backwards = ms.render(params, 32, 8, ms.linear_progress(8)[::-1])
  np.testing.assert_array_equal(backwards, linear[::-1])
  # Extrapolated far enough back, the circle shrinks to size <= 0: nothing is drawn there.
  shrink_to = -params['size0'] / (params['size1'] - params['size0'])
  gone = ms.render(params, 32, 3, np.array([0.0, shrink_to, shrink_to - 1.0]))
  assert gone[0].any() and not gone[1:].any()
  with pytest.raises(ValueError, match=r'progress must have shape \(8,\)'):
    ms.render(params, 32, 8, np.zeros(7))


def test_reversal_progress_turns_at_the_start_of_the_trajectory():
  np.testing.assert_allclose(ms.reversal_progress(8, 3) * 7, [3, 2, 1, 0, 1, 2, 3, 4])
  np.testing.assert_allclose(ms.reversal_progress(8, 0), ms.linear_progress(8))
  for bad in (-1, 8):
    with pytest.raises(ValueError, match='turn_frame'):
      ms.reversal_progress(8, bad)


@pytest.mark.parametrize('motion', ['moving right', 'moving up and left', 'shrinking', 'rotating clockwise'])
def test_reversal_clips_show_the_opposite_motion_before_the_turn(motion):
  """A reversal clip's frames from its turn frame on are the ordinary clip's first frames (the captioned
  motion, at its speed, inside the frame); the frames before it mirror them: the opposite motion. The
  other examples, and every example's labels and geometry, are those of reversal_prob 0."""
  kw = dict(num_examples=60, image_size=32, num_frames=8, motions=motion)
  plain, mixed = ms.MovingShapes(**kw), ms.MovingShapes(**kw, reversal_prob=0.5)
  turns = []
  for i in range(60):
    a, b = plain[i], mixed[i]
    assert a['caption'] == b['caption'] and np.array_equal(a['params'], b['params'])
    assert a['turn_frame'] == 0
    k = int(b['turn_frame'])
    turns.append(k)
    if k == 0:
      np.testing.assert_array_equal(b['video'], a['video'])
      continue
    video = b['video'].astype(int)
    np.testing.assert_array_equal(video[k:], a['video'][:8 - k])   # the captioned motion from the turn on
    m = min(k, 7 - k)   # frames before the turn that have a mirror image after it
    np.testing.assert_array_equal(video[k - m:k], video[k + 1:k + 1 + m][::-1])   # mirrored before it
  turns = np.array(turns)
  assert set(turns[turns > 0]) == {1, 2, 3, 4} and 0.3 < (turns > 0).mean() < 0.7
  if motion in ms.TRANSLATIONS:   # the centre moves against the caption's direction before the turn
    ux, uy = ms.TRANSLATIONS[motion]
    for i in np.flatnonzero(turns > 1):
      cx, cy = _centres(mixed[int(i)]['video'])
      k = turns[i]
      assert np.all(np.diff(cx[:k + 1]) * ux <= 0) and np.all(np.diff(cy[:k + 1]) * uy <= 0)
      assert (np.diff(cx[:k + 1]) * ux + np.diff(cy[:k + 1]) * uy).sum() < -1.0


def test_reversal_prob_refuses_bad_input():
  with pytest.raises(ValueError, match='reversal_prob must be a probability'):
    ms.MovingShapes(reversal_prob=1.5)
  with pytest.raises(ValueError, match='num_frames >= 2'):
    ms.MovingShapes(num_frames=1, reversal_prob=0.5)
  assert 'reversal_prob=0.25' in repr(ms.MovingShapes(reversal_prob=0.25))
