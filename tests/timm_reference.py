"""Importing timm as the reference implementation in tests (skips when the `test` extra is not installed).

timm imports torchvision at import time. A torchvision wheel built for CUDA next to a CPU-only torch cannot load
its compiled operators, and its import then fails registering their fake kernels. The reference tests use no
torchvision operator, so in that case we import torchvision's Python part with fake-kernel registration
skipped. A working torchvision is imported untouched.
"""

from __future__ import annotations

import sys

import pytest


def import_timm():
  torch = pytest.importorskip("torch")
  try:
    import torchvision  # noqa: F401
  except ImportError:
    pass
  except RuntimeError:  # "operator torchvision::nms does not exist": the compiled ops did not load
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    real = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
      import torchvision  # noqa: F401,F811
    finally:
      torch.library.register_fake = real
  return pytest.importorskip("timm")
