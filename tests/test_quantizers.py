"""Quantizers: grids and bit patterns round-trip, nearest cosine code, EMA moves codes, straight-through."""
import jax
import jax.numpy as jnp
import numpy as np

from vidgen_jax.layers import quantizers as q


def test_fsq_codes_are_on_the_grid_and_indices_round_trip():
  fsq = q.FSQ((8, 5, 4), dim=6)
  z = 3 * jax.random.normal(jax.random.key(0), (500, 6))
  params = fsq.init(jax.random.key(1), z)
  _, indices, aux = fsq.apply(params, z)
  assert int(indices.min()) >= 0 and int(indices.max()) < 160
  codes = fsq.indices_to_codes(jnp.arange(160))
  assert len({tuple(c) for c in np.asarray(codes)}) == 160               # a bijection onto the grid
  np.testing.assert_array_equal(fsq.codes_to_indices(codes), np.arange(160))
  bounded = fsq.bound(jnp.linspace(-20, 20, 101)[:, None] * jnp.ones((1, 3)))
  r = jnp.round(bounded)
  assert float(r[:, 0].min()) == -4 and float(r[:, 0].max()) == 3            # L = 8: -4 .. 3
  assert float(r[:, 1].min()) == -2 and float(r[:, 1].max()) == 2            # L = 5: -2 .. 2
  assert 0 < float(aux["usage"]) <= 1 and float(aux["perplexity"]) > 1


def test_lfq_bits_round_trip_and_straight_through_gradient():
  lfq = q.LFQ(16, dim=4)
  bits = lfq.indices_to_bits(jnp.arange(16))
  assert set(np.unique(bits)) == {-1.0, 1.0}
  np.testing.assert_array_equal(lfq.bits_to_indices(bits), np.arange(16))
  z = jax.random.normal(jax.random.key(0), (64, 4))
  params = lfq.init(jax.random.key(1), z)
  out, indices, aux = lfq.apply(params, z)
  np.testing.assert_allclose(lfq.apply(params, indices, method=q.LFQ.decode_indices), out, atol=1e-6)
  assert np.isfinite(float(aux["loss"]))
  # straight-through: d(sum of codes)/dh = identity, so the input gradient is nonzero everywhere
  g = jax.grad(lambda z: lfq.apply(params, z)[0].sum())(z)
  assert float(jnp.abs(g).min()) > 0


def test_vq_picks_the_nearest_code_by_cosine_and_ema_moves_codes():
  vq = q.VQ(8, dim=3, decay=0.5)
  z = jax.random.normal(jax.random.key(0), (32, 3))
  variables = vq.init(jax.random.key(1), z)
  embed = variables["quantizer"]["embed"]
  _, indices, _ = vq.apply(variables, z)
  zn = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  np.testing.assert_array_equal(indices, jnp.argmax(zn @ embed.T, axis=-1))
  (_, _, _), new = vq.apply(variables, z, train=True, mutable=["quantizer"])
  used = np.unique(np.asarray(indices))
  for k in used:
    mean_dir = zn[indices == k].mean(0)
    before = float(embed[k] @ mean_dir)
    after = float(new["quantizer"]["embed"][k] @ mean_dir)
    assert after > before                                             # codes move toward their inputs
  unused = np.setdiff1d(np.arange(8), used)
  assert all(int(new["quantizer"]["unused_steps"][k]) == 1 for k in unused)
  g = jax.grad(lambda z: vq.apply(variables, z)[0].sum())(z)
  assert float(jnp.abs(g).max()) > 0


def test_usage_perplexity_and_reseeding():
  idx = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
  assert float(q.codebook_usage(idx, 8)) == 0.5
  np.testing.assert_allclose(float(q.perplexity(idx, 8)), 4.0, rtol=1e-5)
  np.testing.assert_allclose(float(q.perplexity(jnp.zeros(10, jnp.int32), 8)), 1.0, rtol=1e-5)
  state = {"embed": jnp.eye(4), "embed_avg": jnp.eye(4), "cluster_size": jnp.ones(4),
           "unused_steps": jnp.array([0, 50, 3, 200])}
  inputs = jnp.full((5, 4), 2.0)
  new = q.reseed_dead_codes(state, inputs, jax.random.key(0), max_unused=10)
  np.testing.assert_array_equal(new["embed"][np.array([0, 2])], state["embed"][np.array([0, 2])])          # live codes kept
  np.testing.assert_allclose(new["embed"][np.array([1, 3])], 0.5)                                  # dead ones reseeded
  np.testing.assert_array_equal(new["unused_steps"], [0, 0, 3, 0])
