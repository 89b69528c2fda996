"""Stand-ins for the optional imports of the PyTorch references, for a bare torch + einops environment.

Imported by the standalone reference scripts beside it (stdlib only: never jax, never vidgen_jax). The references
import torchvision at module level but their models never call it (only their datasets, trainers and VGG
perceptual loss do), and the CPU torch wheel often has no matching torchvision build.
"""
import importlib.util
import sys
import types


def _unused(name):
  def fail(*args, **kwargs):
    raise RuntimeError(f"torchvision is not installed: {name} is a stand-in (the benchmarks never call it)")
  return fail


# Module-level uses: `T.ToTensor()` is evaluated as a default argument when video-diffusion-pytorch is imported.
_TORCHVISION = {
    "transforms": {"ToTensor": lambda *a, **k: None, "ToPILImage": lambda *a, **k: None,
                   "Compose": lambda *a, **k: None},
    "utils": {"make_grid": _unused("make_grid"), "save_image": _unused("save_image")},
    "models": {"vgg16": _unused("vgg16"), "VGG16_Weights": None},
    "datasets": {"ImageFolder": _unused("ImageFolder")},
}


def stub_torchvision():
  """Registers a `torchvision` package (with the submodules the references import) when none is installed, so
  `import torchvision.transforms as T` and `from torchvision.utils import make_grid` both work."""
  if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
    return
  package = types.ModuleType("torchvision")
  package.__path__ = []
  for name, attrs in _TORCHVISION.items():
    module = types.ModuleType(f"torchvision.{name}")
    module.__dict__.update(attrs)
    setattr(package, name, module)
    sys.modules[f"torchvision.{name}"] = module
  sys.modules["torchvision"] = package
