"""Quantizers: FSQ grid and index round trip, LFQ bits and entropy terms, VQ nearest cosine code and EMA,
straight-through gradients, usage / perplexity on hand-made indices, dead-code reseeding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.layers import quantizers as q
from vidgen_jax.layers.transformer import l2norm


def _unbox(tree):
  return jax.tree.map(lambda x: getattr(x, "value", x), tree, is_leaf=lambda x: hasattr(x, "value"))


def test_fsq_outputs_lie_on_the_grid_and_indices_round_trip():
  levels = (8, 5, 4)
  fsq = q.FSQ(levels, dim=3)                                              # dim == len(levels): no projections
  z = 3 * jax.random.normal(jax.random.key(0), (2000, 3))
  params = fsq.init(jax.random.key(1), z)
  assert "params" not in params or not params["params"]
  out, indices, aux = jax.jit(fsq.apply)(params, z)
  grid = np.asarray(out) * np.array([4, 2, 2])                            # codes * (L // 2) are integers
  np.testing.assert_array_equal(grid, np.round(grid))
  assert (grid.min(0) == [-4, -2, -2]).all() and (grid.max(0) == [3, 2, 1]).all()
  assert int(indices.min()) >= 0 and int(indices.max()) < 160
  np.testing.assert_array_equal(fsq.codes_to_indices(out), indices)
  np.testing.assert_array_equal(jax.jit(lambda i: fsq.apply(params, i, method=q.FSQ.decode_indices))(indices), out)
  codes = jax.jit(fsq.indices_to_codes)(jnp.arange(160))
  assert len({tuple(c) for c in np.asarray(codes)}) == 160                # a bijection onto the 8 x 5 x 4 grid
  np.testing.assert_array_equal(fsq.codes_to_indices(codes), np.arange(160))
  np.testing.assert_array_equal(fsq.indices_to_codes(jnp.array([1, 8]))[:, :2] * np.array([4, 2]), [[-3, -2], [-4, -1]])
  np.testing.assert_allclose(float(aux["usage"]), len(np.unique(np.asarray(indices))) / 160, rtol=1e-6)
  assert float(aux["loss"]) == 0


def test_fsq_straight_through_and_projections():
  fsq = q.FSQ((5, 5), dim=2)
  z = jax.random.normal(jax.random.key(0), (50, 2))
  w = jax.random.normal(jax.random.key(1), (50, 2))
  params = fsq.init(jax.random.key(2), z)
  g = jax.jit(jax.grad(lambda z: jnp.sum(w * fsq.apply(params, z)[0])))(z)
  g_soft = jax.jit(jax.grad(lambda z: jnp.sum(w * fsq.bound(z) / 2.0)))(z)  # rounding contributes identity
  np.testing.assert_allclose(g, g_soft, rtol=1e-6)
  projected = q.FSQ((5, 5, 4), dim=8)
  pp = projected.init(jax.random.key(3), jnp.zeros((4, 8)))
  assert pp["params"]["project_in"]["kernel"].value.shape == (8, 3)
  out, idx, _ = jax.jit(projected.apply)(pp, jax.random.normal(jax.random.key(4), (4, 8)))
  np.testing.assert_allclose(jax.jit(lambda i: projected.apply(pp, i, method=q.FSQ.decode_indices))(idx), out,
                             atol=1e-6)
  with pytest.raises(ValueError, match=">= 2"):
    q.FSQ((5, 1), dim=2)


def test_lfq_bits_indices_and_straight_through_identity():
  lfq = q.LFQ(16, dim=4)                                                  # dim == log2 K: no projections
  bits = lfq.indices_to_bits(jnp.arange(16))
  assert set(np.unique(bits)) == {-1.0, 1.0}
  np.testing.assert_array_equal(bits[1], [-1, -1, -1, 1])                 # first channel = most significant bit
  np.testing.assert_array_equal(bits[8], [1, -1, -1, -1])
  np.testing.assert_array_equal(lfq.bits_to_indices(bits), np.arange(16))
  z = jax.random.normal(jax.random.key(0), (64, 4))
  params = lfq.init(jax.random.key(1), z)
  out, indices, aux = jax.jit(lfq.apply)(params, z)
  np.testing.assert_array_equal(out, np.sign(z))
  np.testing.assert_array_equal(indices, lfq.bits_to_indices(jnp.sign(z)))
  np.testing.assert_array_equal(lfq.apply(params, indices, method=q.LFQ.decode_indices), out)
  assert float(aux["loss"]) == 0.0                                        # training-only terms are off
  w = jax.random.normal(jax.random.key(2), (64, 4))
  np.testing.assert_array_equal(jax.jit(jax.grad(lambda z: jnp.sum(w * lfq.apply(params, z)[0])))(z), w)
  with pytest.raises(ValueError, match="power-of-2"):
    q.LFQ(12, dim=4)


def test_lfq_entropy_and_commitment_terms():
  lfq = q.LFQ(8, dim=3, entropy_weight=0.5, commitment_weight=2.0, temperature=0.01)
  # confident and evenly spread: each of the 8 codes once, far from zero
  h = 3.0 * lfq.indices_to_bits(jnp.arange(8))
  params = lfq.init(jax.random.key(0), h)
  apply = jax.jit(lambda h: lfq.apply(params, h, train=True))
  _, _, aux = apply(h)
  assert float(aux["per_token_entropy"]) < 1e-3
  np.testing.assert_allclose(float(aux["batch_entropy"]), math.log(8), rtol=1e-4)
  np.testing.assert_allclose(float(aux["commitment"]), 4.0, rtol=1e-6)   # (3 - 1)^2
  np.testing.assert_allclose(float(aux["loss"]), 0.5 * (float(aux["per_token_entropy"]) - math.log(8)) + 2.0 * 4.0,
                             rtol=1e-4)
  # collapsed: every token the same code -> batch entropy ~0, so the aux loss is higher
  _, _, collapsed = apply(jnp.broadcast_to(h[3], h.shape))
  assert float(collapsed["batch_entropy"]) < 1e-3 and float(collapsed["entropy_aux"]) > float(aux["entropy_aux"]) + 2


def _numpy_lfq_entropies(h, temperature, floor):
  """The code distribution written out over all 2^B codes, in float64 (vector-quantize-pytorch's formula)."""
  h = np.asarray(h, np.float64)
  codes = np.asarray(q.sign_patterns(h.shape[-1]), np.float64)
  logits = 2.0 * h @ codes.T / temperature
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ent = lambda p: -np.sum(p * np.log(np.maximum(p, floor)), axis=-1)
  return ent(p).mean(), ent(p.mean(0))


@pytest.mark.parametrize("bits", [1, 3, 4, 7])
@pytest.mark.parametrize("scale", [1e-3, 2e-2, 0.3])
def test_lfq_factorised_entropies_equal_the_full_code_distribution(bits, scale):
  h = scale * jax.random.normal(jax.random.key(bits), (96, bits))
  per_token, batch = jax.jit(q.lfq_entropies, static_argnums=1)(h, 0.01)
  want = _numpy_lfq_entropies(h, 0.01, floor=1e-300)
  np.testing.assert_allclose([float(per_token), float(batch)], want, rtol=2e-5, atol=2e-6)
  # the same gradient as autodiff through the materialised softmax (floor 0: no clamp)
  loss = lambda f: (lambda h: (lambda e: e[0] - e[1])(f(h, 0.01)))
  dense = lambda h, t: q.lfq_entropies_dense(h, t, floor=0.0)
  g, g_dense = jax.grad(loss(q.lfq_entropies))(h), jax.grad(loss(dense))(h)
  np.testing.assert_allclose(g, g_dense, rtol=1e-3, atol=1e-4 * float(jnp.abs(g_dense).max()) + 1e-6)


def test_lfq_reference_entropy_reproduces_the_torch_clamp():
  # soft codes (|h| ~ T): many of the 256 codes have p < 1e-5, where torch's clamp changes the entropies
  h = 0.01 * jax.random.normal(jax.random.key(0), (64, 8))
  lfq = q.LFQ(256, dim=8, reference_entropy=True)
  params = lfq.init(jax.random.key(1), h)
  aux = lfq.apply(params, h, train=True)[2]
  want = _numpy_lfq_entropies(h, 0.01, floor=1e-5)
  np.testing.assert_allclose([float(aux["per_token_entropy"]), float(aux["batch_entropy"])], want, atol=1e-5)
  # the default is the exact entropy; here the clamp moves it by 1.6e-4 nats (of 2.37), about its largest effect
  exact = q.LFQ(256, dim=8).apply(params, h, train=True)[2]
  np.testing.assert_allclose(float(exact["per_token_entropy"]), _numpy_lfq_entropies(h, 0.01, 1e-300)[0],
                             atol=1e-5)
  assert 1e-4 < float(exact["per_token_entropy"]) - want[0] < 3e-4


def test_vq_nearest_cosine_code_ema_update_and_straight_through():
  vq = q.VQ(8, dim=3, decay=0.5)
  z = jax.random.normal(jax.random.key(0), (40, 3)) * 3.0
  variables = vq.init(jax.random.key(1), z)
  assert set(variables) == {q.VQ_COLLECTION}                              # no gradient parameters at all
  stats = variables[q.VQ_COLLECTION]
  embed = stats["embed"]
  np.testing.assert_allclose(jnp.linalg.norm(embed, axis=-1), 1.0, rtol=1e-5)
  out, indices, aux = jax.jit(vq.apply)(variables, z)
  zn = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  np.testing.assert_array_equal(indices, jnp.argmax(zn @ embed.T, axis=-1))
  np.testing.assert_allclose(out, embed[indices], atol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda i: vq.apply(variables, i, method=q.VQ.decode_indices))(indices), out,
                             atol=1e-6)
  np.testing.assert_allclose(float(aux["commitment"]), float(jnp.mean((zn - embed[indices]) ** 2)), rtol=1e-5)
  (_, _, _), new = jax.jit(lambda v, z: vq.apply(v, z, train=True, mutable=[q.VQ_COLLECTION]))(variables, z)
  new, stats = (jax.tree.map(np.asarray, dict(t)) for t in (new[q.VQ_COLLECTION], stats))
  zn, indices, embed = np.asarray(zn), np.asarray(indices), np.asarray(embed)
  used = np.unique(indices)
  for k in used:
    members = zn[indices == k]
    expected_avg = 0.5 * stats["embed_avg"][k] + 0.5 * members.sum(0)
    np.testing.assert_allclose(new["embed_avg"][k], expected_avg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["embed"][k], expected_avg / np.linalg.norm(expected_avg), rtol=1e-5, atol=1e-6)
    mean_dir = members.mean(0)
    assert float(new["embed"][k] @ mean_dir) > float(embed[k] @ mean_dir)   # codes move toward their inputs
    np.testing.assert_allclose(new["cluster_size"][k], 0.5 + 0.5 * len(members), rtol=1e-6)
  dead = np.setdiff1d(np.arange(8), used)
  np.testing.assert_array_equal(new["embed"][dead], embed[dead])
  np.testing.assert_array_equal(new["unused_steps"], np.isin(np.arange(8), dead).astype(np.int32))
  # straight-through: the gradient is the identity w.r.t. the normalised input, i.e. that of l2norm alone
  w = jax.random.normal(jax.random.key(2), z.shape)
  g = jax.jit(jax.grad(lambda z: jnp.sum(w * vq.apply(variables, z)[0])))(z)
  np.testing.assert_allclose(g, jax.vjp(l2norm, z)[1](w)[0], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="mutable"):
    vq.apply(variables, z, train=True)


def test_codebook_usage_and_perplexity_on_hand_made_indices():
  idx = jnp.array([[0, 0, 1, 1], [2, 2, 3, 3]])
  assert float(q.codebook_usage(idx, 8)) == 0.5
  np.testing.assert_allclose(float(q.perplexity(idx, 8)), 4.0, rtol=1e-6)
  np.testing.assert_allclose(float(q.perplexity(jnp.zeros(10, jnp.int32), 8)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(q.perplexity(jnp.arange(16), 16)), 16.0, rtol=1e-5)
  np.testing.assert_allclose(float(q.perplexity(jnp.array([0, 0, 1, 2]), 4)), 2 ** 1.5, rtol=1e-5)
  assert float(q.codebook_usage(jnp.arange(16), 16)) == 1.0
  np.testing.assert_allclose(float(q.codebook_usage(jnp.array([5, 5, 5]), 10)), 0.1, rtol=1e-6)


def test_reseed_replaces_exactly_the_dead_codes_with_distinct_batch_inputs():
  k, d = 6, 4
  stats = {"embed": jnp.eye(k, d), "embed_avg": 2 * jnp.eye(k, d), "cluster_size": jnp.arange(k, dtype=jnp.float32),
           "unused_steps": jnp.array([0, 50, 3, 200, 10, 11], jnp.int32)}
  inputs = jax.random.normal(jax.random.key(0), (2, 5, d))               # 10 encoder outputs
  new = jax.jit(q.reseed_dead_codes, static_argnames="max_unused")(stats, inputs, jax.random.key(1), max_unused=10)
  dead = np.array([False, True, False, True, False, True])               # unused_steps > 10
  for name in stats:
    np.testing.assert_array_equal(np.asarray(new[name])[~dead], np.asarray(stats[name])[~dead])
  flat = np.asarray(l2norm(inputs.reshape(-1, d)))
  fresh = np.asarray(new["embed"])[dead]
  matches = [int(np.argmin(np.abs(flat - row).sum(-1))) for row in fresh]
  np.testing.assert_allclose(fresh, flat[matches], atol=1e-6)             # each one is a (normalised) input
  assert len(set(matches)) == 3                                           # distinct inputs
  np.testing.assert_array_equal(np.asarray(new["embed_avg"])[dead], fresh)
  np.testing.assert_array_equal(np.asarray(new["unused_steps"]), [0, 0, 3, 0, 10, 0])
  np.testing.assert_array_equal(np.asarray(new["cluster_size"])[dead], 1.0)


def test_reseeded_vq_stats_plug_back_into_the_quantizer():
  vq = q.VQ(4, dim=2)
  z = jnp.array([[1.0, 0.0], [0.9, 0.1]])
  variables = vq.init(jax.random.key(0), z)
  stats = dict(variables[q.VQ_COLLECTION])
  update = jax.jit(lambda s: vq.apply({q.VQ_COLLECTION: s}, z, train=True, mutable=[q.VQ_COLLECTION])[1])
  for _ in range(3):                                                      # 3 updates: unassigned codes age
    stats = dict(update(stats)[q.VQ_COLLECTION])
  assert int(np.asarray(stats["unused_steps"]).max()) == 3
  stats = q.reseed_dead_codes(stats, z, jax.random.key(1), max_unused=2)
  assert int(np.asarray(stats["unused_steps"]).max()) == 0
  _, idx, _ = jax.jit(vq.apply)({q.VQ_COLLECTION: stats}, z)
  assert idx.shape == (2,)
