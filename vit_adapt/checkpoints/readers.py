"""Reading tensors from checkpoint files, never unpickling anything.

`read_tensors(path)` returns a flat `{name: np.ndarray}` with the file's own names (Google files use
'/'-joined Flax paths, PyTorch files '.'-joined module paths). Every failure a user can cause (missing file,
truncated or corrupt archive, a pickle inside an `.npz`, torch not installed for a `.pth`, a NaN or inf weight)
is a `UserError` naming the file.
"""

from __future__ import annotations

import argparse

import os
import re
import zipfile
from typing import Callable

import numpy as np

from vit_adapt.errors import UserError

Tensors = dict[str, np.ndarray]

# Keys under which training scripts nest the state dict ({'model': sd}, {'state_dict': sd}, DDP's 'module').
_NESTING_KEYS = ("model", "state_dict", "module", "model_state", "params", "ema")


def read_npz(path: str) -> Tensors:
  """A Google `.npz` (flat, '/'-joined names). Refuses pickled object arrays instead of executing them."""
  try:
    with np.load(path, allow_pickle=False) as f:
      if not isinstance(f, np.lib.npyio.NpzFile):
        raise UserError(f"{path} holds a single array, not a keyed .npz checkpoint.")
      return {k: np.asarray(f[k]) for k in f.files}
  except UserError:
    raise
  except ValueError as e:
    if "pickle" in str(e).lower():
      raise UserError(f"{path} contains pickled Python objects; vit_adapt never unpickles a checkpoint (it could "
                      "run arbitrary code). Re-save it with plain arrays: np.savez(path, **arrays).") from None
    raise UserError(f"{path} is not a readable .npz checkpoint ({e}). Is it truncated? Download it again.") from None
  except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise UserError(f"{path} is not a readable .npz checkpoint ({type(e).__name__}: {e}). "
                    "Is it truncated or not an .npz? Download it again.") from None


def read_safetensors(path: str) -> Tensors:
  """A `.safetensors` file through `safetensors.numpy` (no torch needed); bfloat16 tensors become float32."""
  import ml_dtypes  # registers numpy's 'bfloat16' type name, which safetensors.numpy looks up
  from safetensors.numpy import load_file  # only when a .safetensors file is read
  try:
    tensors = dict(load_file(path))
  except Exception as e:  # safetensors raises its own SafetensorError / OSError on a bad header or size
    raise UserError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {e}). "
                    "Is it truncated? Download it again.") from None
  return {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v for k, v in tensors.items()}


def read_torch(path: str) -> Tensors:
  """A PyTorch `.pth`/`.bin` state dict with `torch.load(weights_only=True)` (no arbitrary unpickling)."""
  try:
    import torch  # optional heavy dependency: only for .pth/.bin files
  except ImportError:
    raise UserError(f"{path} is a PyTorch file and reading it needs torch (pip install torch). Alternatively "
                    "convert it to .safetensors, which vit_adapt reads without torch.") from None
  try:
    # The official DyT / Sparse-Tuning training scripts store their argparse.Namespace beside the weights.
    # Allow-listing that one plain attribute container keeps the weights-only guarantee (no code runs).
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # weights_only refusals are UnpicklingError; corrupt archives RuntimeError/EOFError
    raise UserError(_torch_load_problem(path, e)) from None
  sd = unwrap_state_dict(obj, path)
  out = {}
  for k, v in sd.items():
    if isinstance(v, torch.Tensor):
      out[k] = v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.detach().numpy()
  return out


_RESAVE = ("Re-save it with tensors only, e.g. torch.save({k: v for k, v in state_dict.items() if "
           "isinstance(v, torch.Tensor)}, path), or as .safetensors (safetensors.torch.save_file(state_dict, path)), "
           "which vit_adapt reads without torch.")


def _torch_load_problem(path: str, e: Exception) -> str:
  """What went wrong in `torch.load(weights_only=True)`, without torch's advice to retry with weights_only=False:
  vit_adapt never unpickles a user's file, so the way out is a file of tensors only."""
  text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
  forbidden = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
  if forbidden:
    return (f"{path}: torch.load(weights_only=True) refused it: besides tensors it holds the Python object "
            f"{forbidden.group(1)}, and vit_adapt never unpickles objects from a checkpoint (that could run "
            f"arbitrary code). {_RESAVE}")
  detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
  detail = detail.group(1) if detail else (text.strip().splitlines() or [""])[0].split(". ")[0]
  return (f"{path} is not a PyTorch state dict that torch.load(weights_only=True) can read ({type(e).__name__}: "
          f"{detail.strip().rstrip('.')}). Is it truncated or not a PyTorch file? Download it again, or save the "
          "weights as .safetensors.")


def unwrap_state_dict(obj, path: str) -> dict:
  """{'model': {...}} / {'state_dict': {...}} / DDP 'module.' prefixes -> the plain name -> tensor dict."""
  for _ in range(3):
    if isinstance(obj, dict):
      nested = [k for k in _NESTING_KEYS if isinstance(obj.get(k), dict)]
      if nested and not _looks_like_tensors(obj):
        obj = obj[nested[0]]
        continue
    break
  if not isinstance(obj, dict):
    raise UserError(f"{path} does not hold a state dict (found {type(obj).__name__}).")
  if obj and all(k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return obj


def _looks_like_tensors(d: dict) -> bool:
  return any(hasattr(v, "shape") for v in d.values())


_READERS: dict[str, Callable[[str], Tensors]] = {
    ".npz": read_npz,
    ".safetensors": read_safetensors,
    ".pth": read_torch,
    ".pt": read_torch,
    ".bin": read_torch,
    ".ckpt": read_torch,
}


def read_tensors(path: str) -> Tensors:
  """Any supported checkpoint file -> flat {name: array} with the file's names (nesting unwrapped)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"checkpoint {path} does not exist. Check the path (see docs/checkpoints.md for where the "
                    "Google and timm ViT weights come from).")
  if os.path.isdir(path):
    raise UserError(f"{path} is a directory; read_tensors takes a file (.npz, .safetensors, .pth, .bin).")
  ext = os.path.splitext(path)[1].lower()
  if ext not in _READERS:
    raise UserError(f"{path}: unknown checkpoint extension {ext!r}. Supported: {', '.join(sorted(_READERS))}.")
  tensors = _READERS[ext](path)
  if ext == ".npz":
    tensors = _strip_prefix(tensors, ("params/", "opt/target/"))
  if not tensors:
    raise UserError(f"{path} contains no tensors.")
  check_finite(tensors, path)
  return tensors


def check_finite(tensors: Tensors, source: str) -> None:
  """Raises UserError naming the first tensor (in file order) with a NaN or inf value, and `source`.

  Every checkpoint read goes through here: a non-finite weight would otherwise surface much later, as NaN
  predictions or a training run that "diverges" from its first step.
  """
  bad = [k for k, v in tensors.items() if np.issubdtype(np.asarray(v).dtype, np.inexact)
         and not np.isfinite(v).all()]
  if bad:
    v = np.asarray(tensors[bad[0]])
    raise UserError(f"{source}: tensor {bad[0]!r} {tuple(v.shape)} has {int(np.isnan(v).sum())} NaN and "
                    f"{int(np.isinf(v).sum())} inf values" + (f" ({len(bad) - 1} more tensors too)" if len(bad) > 1
                                                              else "") +
                    ". The checkpoint is damaged or comes from a diverged training run; use another checkpoint.")


def _strip_prefix(tensors: Tensors, prefixes) -> Tensors:
  """big_vision stores the model under 'params/', old Flax optimizers under 'opt/target/'."""
  for p in prefixes:
    if tensors and all(k.startswith(p) for k in tensors):
      return {k[len(p):]: v for k, v in tensors.items()}
  return tensors
