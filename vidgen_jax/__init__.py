"""vidgen-jax: text-to-video generation in pure functional Flax, sharded with jax.jit over a Mesh."""

__version__ = "0.1.0"
