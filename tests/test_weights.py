"""Backbones by name (vit_adapt/checkpoints/weights.py): file:// URLs stand in for the public buckets."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from vit_adapt.checkpoints import weights
from vit_adapt.errors import UserError


@pytest.fixture
def source(tmp_path, monkeypatch):
  """A 3 MB .npz served from a file:// URL under the name 'test-vit', and an empty cache directory."""
  src = tmp_path / "bucket" / "ViT-T.npz"
  src.parent.mkdir()
  np.savez(src, w=np.arange(3 * 2**18, dtype=np.float32))
  data = src.read_bytes()
  monkeypatch.setenv("VIT_ADAPT_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(weights, "_CHUNK", 1 << 18)  # several chunks
  monkeypatch.setitem(weights.NAMES, "test-vit", weights.Weights(src.as_uri(), ".npz", size=len(data),
                                                                  sha256=hashlib.sha256(data).hexdigest()))
  return src, data


def test_a_name_is_downloaded_once_and_then_read_from_the_cache(source, tmp_path):
  src, data = source
  path = weights.resolve("test-vit")
  assert path == os.path.join(tmp_path, "cache", "weights", "test-vit.npz")
  assert open(path, "rb").read() == data
  assert os.listdir(os.path.dirname(path)) == ["test-vit.npz"]  # no temporary file left behind
  src.unlink()  # the second call must not read the source
  assert weights.resolve("test-vit") == path


def test_paths_pass_through_unchanged(source):
  assert weights.resolve("weights/ViT-B_16.npz") == "weights/ViT-B_16.npz"
  assert weights.is_name("vit-b16-in21k") and not weights.is_name("weights/ViT-B_16.npz")


@pytest.mark.parametrize("field,value,needle", [("sha256", "0" * 64, "sha256"), ("size", 123, "expected 123")])
def test_a_corrupt_download_is_refused_and_not_cached(source, monkeypatch, tmp_path, field, value, needle):
  src, _ = source
  w = weights.NAMES["test-vit"]
  monkeypatch.setitem(weights.NAMES, "test-vit", weights.Weights(w.url, w.suffix, **{
      "size": w.size, "sha256": w.sha256, field: value}))
  with pytest.raises(UserError, match=f"corrupt.*{needle}") as e:
    weights.resolve("test-vit")
  assert src.as_uri() in str(e.value) and "--config.model.init=/path/to/ViT-T.npz" in str(e.value)
  assert os.listdir(tmp_path / "cache" / "weights") == []


def test_an_unreachable_url_says_how_to_pass_a_local_file(source, monkeypatch, tmp_path):
  url = (tmp_path / "offline" / "ViT-B_16.npz").as_uri()
  monkeypatch.setitem(weights.NAMES, "test-vit", weights.Weights(url, ".npz"))
  with pytest.raises(UserError) as e:
    weights.resolve("test-vit")
  msg = str(e.value)
  assert f"could not download the weights 'test-vit' from {url}" in msg
  assert "--config.model.init=/path/to/ViT-B_16.npz" in msg
  assert os.listdir(tmp_path / "cache" / "weights") == []


def test_the_documented_names_are_in_the_table():
  doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "checkpoints.md")).read()
  for name, w in weights.NAMES.items():
    assert f"`{name}`" in doc, f"docs/checkpoints.md does not list {name}"
    assert w.url.startswith(("https://", "gs://")) and w.suffix in (".npz", ".safetensors")


def test_model_init_by_name_goes_through_the_download(source, monkeypatch, tmp_path):
  from vit_adapt import checkpoints
  monkeypatch.setitem(weights.NAMES, "test-vit", weights.Weights((tmp_path / "nowhere.npz").as_uri(), ".npz"))
  with pytest.raises(UserError, match="could not download the weights 'test-vit'"):
    checkpoints.load_backbone("test-vit", {}, config=None)
