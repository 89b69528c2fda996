"""The matmul floor: the dots and convolutions of a jitted function read off its HLO, with counts, FLOPs and a time."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen_jax.bench import matmul_floor, timing


def _fn(x, w, q, k):
  h = jnp.tanh(x @ w) @ w.T                      # two (8, 16) x (16, 16)-shaped products
  return h.sum() + jnp.einsum("bqd,bkd->bqk", q, k).sum()   # one batched product


def _args():
  return (jnp.ones((8, 16)), jnp.ones((16, 16)), jnp.ones((3, 5, 4)), jnp.ones((3, 7, 4)))


def test_reads_every_dot_with_its_shapes_dimension_numbers_and_flops():
  found = matmul_floor.dots(jax.jit(_fn).lower(*_args()).as_text(dialect="hlo"))
  assert sum(found.values()) == 3
  batched = [d for d in found if d.batch != ((), ())]
  assert len(batched) == 1 and batched[0].lhs == (3, 5, 4) and batched[0].rhs == (3, 7, 4)
  assert batched[0].batch == ((0,), (0,)) and batched[0].contracting == ((2,), (2,))
  assert batched[0].flops == 2 * 3 * 5 * 7 * 4
  plain = sum(n * d.flops for d, n in found.items() if d not in batched)
  assert plain == 2 * (2 * 8 * 16 * 16)
  # A function made only of dots: the floor's FLOPs are exactly XLA's cost analysis.
  only_dots = jax.jit(lambda x, w, q, k: ((x @ w) @ w, jnp.einsum("bqd,bkd->bqk", q, k)))
  assert matmul_floor.matmul_floor(only_dots, *_args(), reps=1)["flops"] == pytest.approx(
      timing.compiled_flops(only_dots, *_args()))


def test_the_gradient_of_a_product_adds_its_two_transposed_products():
  loss = lambda x, w: jnp.sum(jnp.tanh(x @ w))
  floor = matmul_floor.matmul_floor(jax.jit(jax.grad(loss, argnums=(0, 1))), jnp.ones((32, 24)), jnp.ones((24, 40)),
                                    reps=2)
  assert floor["dots"] == 3 and floor["flops"] == 3 * 2 * 32 * 24 * 40 and floor["seconds"] > 0


def test_no_dots_no_floor_and_unreadable_text_is_refused():
  assert matmul_floor.matmul_floor(jax.jit(jnp.sin), jnp.ones(4)) == {
      "seconds": 0.0, "flops": 0.0, "dots": 0, "convolutions": 0, "distinct": 0, "conv_seconds": 0.0,
      "conv_flops": 0.0}
  with pytest.raises(ValueError, match="operands"):
    matmul_floor.dots("  d.1 = f32[2,2]{1,0} dot(a.1, b.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}")


def test_reads_hlo_text_with_operand_types_inline():
  text = ("  %a = f32[4,6]{1,0} parameter(0)\n  %b = f32[6,5]{1,0} parameter(1)\n"
          "  ROOT %dot.3 = f32[4,5]{1,0} dot(f32[4,6]{1,0} %a, f32[6,5]{1,0} %b), lhs_contracting_dims={1}, "
          "rhs_contracting_dims={0}")
  (dot, n), = matmul_floor.dots(text).items()
  assert n == 1 and dot.lhs == (4, 6) and dot.rhs == (6, 5) and dot.flops == 2 * 4 * 6 * 5


def _conv(x, w, stride):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_reads_convolutions_and_their_gradients_and_rebuilds_each_at_its_hlo_shape():
  x, w = jnp.ones((2, 9, 8, 3)), jnp.ones((4, 4, 3, 5))
  loss = lambda x, w: jnp.sum(jnp.tanh(_conv(x, w, 2)))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  found = matmul_floor.products(grad.lower(x, w).as_text(dialect="hlo"))
  convs = [p for p in found if isinstance(p, matmul_floor.Conv)]
  # forward, input gradient (lhs-dilated) and kernel gradient (rhs-dilated), with their dim_labels
  assert sum(found[c] for c in convs) == 3 and not matmul_floor.dots(grad.lower(x, w).as_text(dialect="hlo"))
  assert {c.out for c in convs} == {(2, 4, 4, 5), (2, 9, 8, 3), (4, 4, 3, 5)}
  assert any(c.lhs_dilation == (2, 2) for c in convs) and any(c.rhs_dilation == (2, 2) for c in convs)
  floor = matmul_floor.matmul_floor(grad, x, w, reps=1)   # refuses a rebuilt conv of another shape
  assert floor["convolutions"] == 3 and floor["dots"] == 0 and floor["seconds"] == floor["conv_seconds"] > 0


def test_conv_only_floor_flops_are_xla_cost_analysis():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
  only_convs = jax.jit(lambda x, w: (_conv(x, w, 1), _conv(x, w, 2)))
  floor = matmul_floor.matmul_floor(only_convs, x, w, reps=1)
  assert floor["convolutions"] == 2 and floor["flops"] == floor["conv_flops"] == pytest.approx(
      timing.compiled_flops(only_convs, x, w))


@pytest.mark.parametrize("spec,lhs,rhs", [("bqd,bkd->bqk", (3, 5, 4), (3, 7, 4)),
                                          ("sphd,tphd->phst", (4, 3, 2, 5), (4, 3, 2, 5)),
                                          ("kc,kn->cn", (6, 3), (6, 4))])
def test_canonical_dot_is_the_same_product_laid_out_batch_m_k_by_batch_k_n(spec, lhs, rhs):
  f = jax.jit(lambda a, b: jnp.einsum(spec, a, b))
  (dot, _), = matmul_floor.dots(f.lower(jnp.ones(lhs), jnp.ones(rhs)).as_text(dialect="hlo")).items()
  canon = dot.canonical()
  assert canon.flops == dot.flops and canon.canonical() == canon
  assert canon.contracting in (((2,), (1,)), ((1,), (0,)))
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal(dot.lhs).astype(np.float32), rng.standard_normal(dot.rhs).astype(np.float32)
  (lc, rc), (lb, rb) = dot.contracting, dot.batch
  free_l = [i for i in range(a.ndim) if i not in lc + lb]
  free_r = [i for i in range(b.ndim) if i not in rc + rb]
  a2 = np.transpose(a, lb + tuple(free_l) + lc).reshape(canon.lhs)
  b2 = np.transpose(b, rb + rc + tuple(free_r)).reshape(canon.rhs)
  np.testing.assert_allclose(np.asarray(canon.jitted()(a2, b2)).reshape(-1),
                             np.asarray(dot.jitted()(a, b)).reshape(-1), rtol=1e-5, atol=1e-5)


def test_torch_spec_lists_dots_canonically_and_forward_convs_with_their_input_gradient(tmp_path):
  from vidgen_jax.bench import common
  x, w, v = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((3, 3, 4, 4))
  loss = lambda w, v, m: jnp.sum(jnp.tanh(_conv(_conv(x, w, 1), v, 2)) @ m)   # the data conv: no input gradient
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  args = (w, v, jnp.ones((4, 5)))
  spec = matmul_floor.torch_spec(matmul_floor.products(grad.lower(*args).as_text(dialect="hlo")))
  convs = {tuple(c["out"]): c for c in spec["convs"]}
  assert set(convs) == {(2, 8, 8, 4), (2, 4, 4, 4)} and spec["skipped"] == 0
  assert not convs[(2, 8, 8, 4)]["input_grad"] and convs[(2, 4, 4, 4)]["input_grad"]
  assert convs[(2, 4, 4, 4)]["strides"] == [2, 2] and convs[(2, 4, 4, 4)]["padding"] == [[1, 1], [1, 1]]
  assert spec["dots"] and all(len(d["lhs"]) in (2, 3) and d["lhs"][-1] == d["rhs"][-2] for d in spec["dots"])
  # Without torch the floor keeps XLA's figures and leaves torch's out.
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
  fake.chmod(0o755)
  fields = common.floor_fields(grad, *args, reps=1, torch_python=str(fake))
  assert fields["matmul_floor_s"] > 0 and "reference_matmul_floor_s" not in fields
