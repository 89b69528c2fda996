"""The matmul floor: the dots of a jitted function read off its HLO, with their counts, FLOPs and a time."""
import jax
import jax.numpy as jnp
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
  assert matmul_floor.matmul_floor(jax.jit(jnp.sin), jnp.ones(4)) == {"seconds": 0.0, "flops": 0.0, "dots": 0,
                                                                      "distinct": 0}
  with pytest.raises(ValueError, match="operands"):
    matmul_floor.dots("  d.1 = f32[2,2]{1,0} dot(a.1, b.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}")


def test_reads_hlo_text_with_operand_types_inline():
  text = ("  %a = f32[4,6]{1,0} parameter(0)\n  %b = f32[6,5]{1,0} parameter(1)\n"
          "  ROOT %dot.3 = f32[4,5]{1,0} dot(f32[4,6]{1,0} %a, f32[6,5]{1,0} %b), lhs_contracting_dims={1}, "
          "rhs_contracting_dims={0}")
  (dot, n), = matmul_floor.dots(text).items()
  assert n == 1 and dot.lhs == (4, 6) and dot.rhs == (6, 5) and dot.flops == 2 * 4 * 6 * 5
