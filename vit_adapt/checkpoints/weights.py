"""Pre-trained backbones by name: `--config.model.init=vit-b16-in21k` downloads the public file once into a cache.

NAMES maps a name to its public URL (https://, gs:// through etils.epath, file://), the file's format suffix and,
where known, its size and sha256. `resolve(init)` returns a local path: a name is downloaded on first use to
`$VIT_ADAPT_CACHE_DIR/weights/<name><suffix>` (default `~/.cache/vit_adapt`), with progress lines and the size /
sha256 check, into a temporary file renamed into place only when complete, so an interrupted or corrupt
download never leaves a cache entry; anything else (a path) is returned unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request

from absl import logging

from vit_adapt.errors import UserError


@dataclasses.dataclass(frozen=True)
class Weights:
  url: str
  suffix: str  # the format, as the readers tell it from the file name: '.npz', '.safetensors'
  size: int | None = None  # bytes, where known
  sha256: str | None = None  # where known


_GOOGLE = "https://storage.googleapis.com/vit_models"
_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"

# docs/checkpoints.md lists these; sizes and hashes are filled in once a download has been verified.
NAMES: dict[str, Weights] = {
    # The original ImageNet-21k checkpoints (Google .npz, pre-Linen names), the ones all four papers adapt.
    "vit-b16-in21k": Weights(f"{_GOOGLE}/imagenet21k/ViT-B_16.npz", ".npz"),
    "vit-b32-in21k": Weights(f"{_GOOGLE}/imagenet21k/ViT-B_32.npz", ".npz"),
    "vit-l16-in21k": Weights(f"{_GOOGLE}/imagenet21k/ViT-L_16.npz", ".npz"),
    "vit-l32-in21k": Weights(f"{_GOOGLE}/imagenet21k/ViT-L_32.npz", ".npz"),
    "vit-h14-in21k": Weights(f"{_GOOGLE}/imagenet21k/ViT-H_14.npz", ".npz"),
    # AugReg ("How to train your ViT"), the recommended i21k checkpoint of each size (gs://vit_models/augreg/).
    "vit-b16-augreg-in21k": Weights(
        f"{_GOOGLE}/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", ".npz"),
    # timm names (Hugging Face safetensors).
    "vit_base_patch16_224.orig_in21k": Weights(_HF.format("vit_base_patch16_224.orig_in21k"), ".safetensors"),
    "vit_base_patch16_224.augreg_in21k": Weights(_HF.format("vit_base_patch16_224.augreg_in21k"), ".safetensors"),
}

_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 10.0


def cache_dir() -> str:
  base = os.environ.get("VIT_ADAPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vit_adapt")
  return os.path.join(base, "weights")


def is_name(init: str) -> bool:
  return init in NAMES


def resolve(init: str) -> str:
  """A local file for `init`: a name of NAMES is downloaded once into the cache; a path is returned as is."""
  if init not in NAMES:
    return init
  w = NAMES[init]
  target = os.path.join(cache_dir(), init + w.suffix)
  if os.path.exists(target):
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  _download(init, w, target)
  return target


def _open(url: str):
  if url.startswith("gs://"):
    from etils import epath  # late: only gs:// URLs need it (and its GCS backend)
    return epath.Path(url).open("rb"), None
  response = urllib.request.urlopen(url, timeout=60)
  length = response.headers.get("Content-Length")
  return response, int(length) if length else None


def _download(name: str, w: Weights, target: str) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=os.path.dirname(target))
  try:
    try:
      src, total = _open(w.url)
      total = w.size or total
      logging.info("Downloading %s from %s to %s%s", name, w.url, target,
                   f" ({total / 1e6:.0f} MB)" if total else "")
      digest, done, last = hashlib.sha256(), 0, time.monotonic()
      with src, os.fdopen(fd, "wb") as out:
        fd = None
        while chunk := src.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          done += len(chunk)
          if time.monotonic() - last >= _PROGRESS_EVERY_S:
            last = time.monotonic()
            logging.info("  %s: %.0f MB%s", name, done / 1e6, f" of {total / 1e6:.0f} MB ({100 * done / total:.0f}%)"
                         if total else "")
    except (OSError, urllib.error.URLError, ValueError) as e:
      raise UserError(
          f"could not download the weights {name!r} from {w.url} ({type(e).__name__}: {e}). Without network "
          f"access, download that file elsewhere and pass its path instead: --config.model.init=/path/to/"
          f"{os.path.basename(w.url)} (or copy it to {target}).") from None
    problem = None
    if w.size is not None and done != w.size:
      problem = f"{done} bytes, expected {w.size}"
    elif w.sha256 is not None and digest.hexdigest() != w.sha256:
      problem = f"sha256 {digest.hexdigest()}, expected {w.sha256}"
    if problem:
      raise UserError(f"the download of the weights {name!r} from {w.url} is corrupt ({problem}); nothing was "
                      f"cached. Run again to retry, or download the file yourself and pass "
                      f"--config.model.init=/path/to/{os.path.basename(w.url)}.")
    os.replace(tmp, target)  # atomic: the cache holds complete, verified files only
    tmp = None
    logging.info("Downloaded %s (%.0f MB, sha256 %s)", name, done / 1e6, digest.hexdigest())
  finally:
    if fd is not None:
      os.close(fd)
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
