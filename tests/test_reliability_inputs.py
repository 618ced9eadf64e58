"""Bad inputs end in one clear error (or are read correctly): 16-bit images, timm files of another variant, NaN
weights, out-of-range config numbers, broken model directories and results files, unwritable outputs.

Command lines run in subprocesses (what a user sees: stderr and the exit status) on tiny generated files; the
library-level rules are checked in-process.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import make_tiny_config
from PIL import Image
from test_cli_errors import assert_clean_failure, random_backbone, run, save_npz

from vit_adapt import convert
from vit_adapt.data import images
from vit_adapt.errors import UserError

@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("reliability_inputs")
  good = save_npz(random_backbone(), d / "good.npz")
  model_dir = convert.convert("npz", good, make_tiny_config("linear"), str(d / "model"))
  return dict(dir=d, good=good, model=model_dir)


# ---------------------------------------------------------------------------------------------- 3: 16-bit images

def gradient16() -> np.ndarray:
  return (np.arange(40 * 40, dtype=np.int64).reshape(40, 40) * 40).astype(np.uint16)  # 0 .. 63960


def test_16bit_png_is_scaled_not_saturated(tmp_path):
  a = gradient16()
  Image.fromarray(a).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode == "I;16"
  x = images.decode(str(tmp_path / "g16.png"))
  assert x.dtype == np.uint8 and x.shape == (40, 40, 3)
  np.testing.assert_array_equal(x[..., 0], np.round(a / 257.0).astype(np.uint8))
  assert (x == 255).mean() < 0.01  # PIL's convert("RGB") made 99% of these pixels white
  np.testing.assert_array_equal(images.decode((tmp_path / "g16.png").read_bytes()), x)


def test_float_images_scaled_or_refused(tmp_path):
  unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
  Image.fromarray(unit, mode="F").save(tmp_path / "unit.tiff")
  np.testing.assert_array_equal(images.decode(str(tmp_path / "unit.tiff"))[..., 1], np.round(unit * 255))
  Image.fromarray(unit * 1000, mode="F").save(tmp_path / "wide.tiff")
  with pytest.raises(UserError, match=r"wide\.tiff is a float image .* values in \[0, 1000\]"):
    images.decode(str(tmp_path / "wide.tiff"))


def test_predict_reads_a_16bit_png_as_its_8bit_equivalent(files, tmp_path):
  a = gradient16()
  Image.fromarray(a).save(tmp_path / "a16.png")
  Image.fromarray(np.round(a / 257.0).astype(np.uint8)).save(tmp_path / "b8.png")
  r = run("predict", f"--checkpoint={files['model']}", f"--images={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  a16, b8 = [json.loads(line) for line in r.stdout.strip().splitlines()]
  assert a16["path"].endswith("a16.png") and b8["path"].endswith("b8.png")
  assert a16["top_classes"] == b8["top_classes"] and a16["top_probs"] == b8["top_probs"]
