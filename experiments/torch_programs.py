"""The PyTorch side of experiments/bench_vs_pytorch.py: timm's dense ViT and the official models, timed eagerly
(float32, or fp16 autocast on GPU) or through `torch.compile`.

The official codes are imported at run time from a checkout the user passes (never copied into this project):
  DyT           NUS-HPC-AI-Lab/Dynamic-Tuning: `models/model_speed_test.py` (the model its `speed.py` times:
                MLP tokens gathered by `nonzero()`), ViT-B/16 with `adaptmlp` adapters and routers in every
                block. Needs timm >= 0.9, einops; `easydict`, `torch._six` and `numpy.lib.arraysetops` get tiny
                stand-ins when missing.
  Sparse-Tuning liuting20/Sparse-Tuning: `models/vit_image.py` (EViT-style token pruning + fusion, the released
                multi-branch adapter, the official BatchNorm head). Written for timm 0.4.12 and width 768; with
                a newer timm its builder's `build_model_with_cfg(default_cfg=...)` fails, and the class is built
                directly with the same arguments.
Routers of the official DyT model are calibrated on the benchmark batch like ours (the same activation rate);
Sparse-Tuning uses the same keep rate and blocks as our program.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types

import numpy as np

# timm names of our variants (anything else: timm's VisionTransformer class with the variant's sizes).
TIMM_NAMES = {"Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224", "B/16": "vit_base_patch16_224",
              "L/16": "vit_large_patch16_224", "B/32": "vit_base_patch32_224", "S/32": "vit_small_patch32_224"}


def import_torch_timm():
  """-> (torch, timm). timm imports torchvision; a torchvision built for another torch fails registering its
  operators' fake kernels, so it is then imported with that registration skipped (no torchvision op is used)."""
  import torch
  try:
    import torchvision  # noqa: F401
  except ImportError:
    pass
  except RuntimeError:  # "operator torchvision::nms does not exist"
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    real = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
      import torchvision  # noqa: F401,F811
    finally:
      torch.library.register_fake = real
  import timm
  return torch, timm


def device():
  import torch
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def images(batch: int, image_size: int, seed: int = 0):
  import torch
  g = torch.Generator().manual_seed(seed)
  return (torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1).to(device())


def timm_dense(backbone: dict, num_classes: int, variant: str):
  """timm's dense ViT with random weights: `vit_base_patch16_224` etc. at our image size, else the class."""
  _, timm = import_torch_timm()
  size = backbone["image_size"]
  if variant in TIMM_NAMES:
    model = timm.create_model(TIMM_NAMES[variant], pretrained=False, num_classes=num_classes, img_size=size)
    label = f"timm {TIMM_NAMES[variant]}"
  else:
    from timm.models.vision_transformer import VisionTransformer
    model = VisionTransformer(img_size=size, patch_size=backbone["patch_size"], embed_dim=backbone["width"],
                              depth=backbone["depth"], num_heads=backbone["num_heads"],
                              mlp_ratio=backbone["mlp_dim"] / backbone["width"], num_classes=num_classes)
    label = "timm VisionTransformer"
  return model.eval().to(device()), label


# ------------------------------------------------------------------------------------------------------------
# Official DyT.

def _dyt_shims():
  sys.modules.setdefault("torch._six", types.SimpleNamespace(inf=float("inf"), string_classes=(str,)))
  try:
    import numpy.lib.arraysetops  # noqa: F401
  except ImportError:
    sys.modules["numpy.lib.arraysetops"] = types.SimpleNamespace(isin=np.isin)
  try:
    import easydict  # noqa: F401
  except ImportError:
    class EasyDict(dict):
      __getattr__ = dict.__getitem__
    sys.modules["easydict"] = types.SimpleNamespace(EasyDict=EasyDict)


def _import_from(checkout: str, module: str, package_dir: str = "models"):
  """Imports `models.<module>` from a checkout, bypassing its `models/__init__.py`."""
  if not os.path.isdir(os.path.join(checkout, package_dir)):
    raise FileNotFoundError(f"{checkout} has no {package_dir}/: pass a checkout of the official repository")
  if checkout not in sys.path:
    sys.path.insert(0, checkout)
  pkg = types.ModuleType(package_dir)
  pkg.__path__ = [os.path.join(checkout, package_dir)]
  sys.modules[package_dir] = pkg
  for name in [n for n in sys.modules if n.startswith(package_dir + ".")]:
    del sys.modules[name]  # another checkout's module of the same name
  return importlib.import_module(f"{package_dir}.{module}")


def official_dyt(checkout: str, *, backbone: dict, num_classes: int, bottleneck: int, rate: float, x):
  """The official DyT speed-test model with routers calibrated on `x` to `rate` active patch tokens."""
  import torch
  import_torch_timm()
  _dyt_shims()
  if backbone["width"] != 768 or backbone["depth"] != 12 or backbone["patch_size"] != 16:
    raise ValueError("the official DyT speed model is ViT-B/16 only: run with --variant=B/16")
  mod = _import_from(checkout, "model_speed_test")
  easydict = sys.modules["easydict"].EasyDict
  tuning = easydict(ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
                    ffn_adapter_init_option="lora", ffn_adapter_scalar="0.1", ffn_num=bottleneck, d_model=768)
  select = easydict(open=True, keep_layers=0)
  size = backbone["image_size"]
  model = mod.vit_base_patch16_224_in21k(num_classes=num_classes, img_size=size, tuning_config=tuning,
                                         select_config=select)
  model = model.eval().to(x.device)
  with torch.no_grad():  # non-zero adapters, as after training
    for name, p in model.named_parameters():
      if "adaptmlp" in name:
        p.add_(0.01 * torch.randn_like(p))
  _calibrate_official_dyt(model, x, rate)
  return model, f"official DyT model_speed_test ({rate:.2f} active)"


def _calibrate_official_dyt(model, x, rate: float, iters: int = 4):
  """Per-block router biases so that `rate` of the patch tokens of x pass (sigmoid > 0.5, i.e. logit > 0)."""
  import torch
  selects = [b.mlp_token_select for b in model.blocks]
  logits = {}
  hooks = [s.register_forward_hook(lambda m, i, o, k=k: logits.__setitem__(k, o[1].detach()))
           for k, s in enumerate(selects)]
  try:
    with torch.no_grad():
      for _ in range(iters):
        model(x)
        for k, s in enumerate(selects):
          s.mlp_head.bias.sub_(torch.quantile(logits[k].float().flatten(), 1.0 - rate))
  finally:
    for h in hooks:
      h.remove()


# ------------------------------------------------------------------------------------------------------------
# Official Sparse-Tuning.

class _StubTorchprofile(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """An empty `torchprofile` (imported by the official module at the top, never used for the forward)."""

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "torchprofile":
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    m = types.ModuleType(spec.name)
    m.__path__ = []
    m.__getattr__ = lambda attr: type(attr, (), {"__init__": lambda self, *a, **k: None})
    return m

  def exec_module(self, module):
    pass


def official_sparse_tuning(checkout: str, *, backbone: dict, num_classes: int, sparse_blocks, keep_rate: float,
                           fuse_token: bool, device_):
  import torch
  import_torch_timm()
  if backbone["width"] != 768:
    raise ValueError("the official Sparse-Tuning adapter hard-codes width 768: run with --variant=B/16")
  try:
    import torchprofile  # noqa: F401
  except ImportError:
    sys.meta_path.insert(0, _StubTorchprofile())
  mod = _import_from(checkout, "vit_image")
  keep = [1] * backbone["depth"]
  for b in sparse_blocks:
    keep[b] = keep_rate
  size = backbone["image_size"]
  cfg = types.SimpleNamespace(ffn_adapt=True, ffn_option="parallel")
  kwargs = dict(patch_size=backbone["patch_size"], embed_dim=768, depth=backbone["depth"],
                num_heads=backbone["num_heads"], keep_rate=keep, num_classes=num_classes, img_size=size,
                tuning_config=cfg, fuse_token=fuse_token)
  how = "vit_base_patch16"
  try:
    if backbone["depth"] != 12 or backbone["patch_size"] != 16:
      raise TypeError("not ViT-B/16")
    model = mod.vit_base_patch16(base_keep_rate=keep_rate, drop_loc=tuple(sparse_blocks), num_classes=num_classes,
                                 img_size=size, tuning_config=cfg, fuse_token=fuse_token)
  except TypeError:  # newer timm: build_model_with_cfg no longer takes default_cfg; the same class directly
    model = mod.VisionTransformer(**kwargs)
    how = "VisionTransformer"
  # The official training script's head: non-affine BatchNorm in front of the linear head.
  model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(768, affine=False, eps=1e-6), model.head)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "adaptmlp" in name:
        p.add_(0.01 * torch.randn_like(p))
  return model.eval().to(device_), f"official Sparse-Tuning {how} (keep {keep_rate} at {tuple(sparse_blocks)})"


# ------------------------------------------------------------------------------------------------------------
# Timed calls.

def runner(model, x, mode: str):
  """-> (zero-argument call, sync). mode: 'eager fp32' | 'eager fp16 autocast' | 'compile fp16 autocast' |
  'compile fp32'."""
  import torch
  dev = x.device.type
  fn = torch.compile(model) if mode.startswith("compile") else model
  autocast = "fp16" in mode

  def run():
    with torch.inference_mode():
      if autocast:
        with torch.autocast(dev, dtype=torch.float16):
          return fn(x)
      return fn(x)

  def sync(out):
    if dev == "cuda":
      torch.cuda.synchronize()
    return out
  return run, sync
