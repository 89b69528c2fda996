"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere.

XLA:CPU compile time dominates this suite (a tiny U-Net train step is ~10 s to compile and ~0.2 s to run), so
tests compile with backend optimisation level 0 and share a per-session persistent compilation cache:
programs that several tests build identically (the same tiny config on the same mesh) compile once.
"""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
_XLA_CACHE = tempfile.mkdtemp(prefix="vidgen-test-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)   # ~200 MB a run
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
