"""vidgen-jax: text-to-video generation research in JAX/Flax, from a laptop CPU to TPU pods."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setup(
    name="vidgen_jax",
    version="0.1.0",
    description="Text-to-video generation research in JAX/Flax (video diffusion, Phenaki, Make-A-Video).",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vidgen_jax", "vidgen_jax.*"]),
    # The shapes evaluator's weights ship with the package so every evaluation uses the same network.
    package_data={"vidgen_jax": ["eval/assets/*.safetensors"]},
    install_requires=_requirements(),
    extras_require={
        # Reference checks against HF transformers' Flax classes (4.x is the last line with Flax).
        # pytest-xdist: launch/test.sh runs the suite on up to 4 worker processes (XLA:CPU compiles, which
        # dominate the suite's time, are single-threaded).
        "test": ["pytest>=8", "pytest-xdist>=3.6,<4", "transformers>=4.57.6,<5"],
        # Checkpoint conversion from the PyTorch references and side-by-side benchmarks.
        "torch": ["torch>=2.1", "video-diffusion-pytorch==0.7.0"],
        # Ahead-of-time compilation for TPU topologies on a CPU host (`vidgen compile --topology v5p:2x2x2`):
        # the libtpu that the installed jax release pins (jax 0.10.2: 0.0.42.*, which compiles every preset of
        # U-Net L; 0.0.50.1 with jax 0.12.0.1, and 0.0.52, abort compiling its fsdp preset: README).
        "tpu-aot": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["vidgen=vidgen_jax.cli:main"]},
)
