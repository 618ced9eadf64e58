"""End to end: `train_and_evaluate` for two steps of every baseline on a generated image-folder dataset (the
NOAH/VPT layout: images + list files), checking what a run leaves in its workdir."""

import os

import numpy as np
import pytest
from PIL import Image

from e2e_checks import BASELINES, check_run, vtab_config
from vit_adapt import train


def _folder_dataset(root, n=12):
  folder = os.path.join(root, "dtd")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(n):
    rel = f"images/c{i % 4}/{i}.jpg"
    os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24 + i, 40, 3), np.uint8)).save(os.path.join(folder, rel))
    lines.append(f"{rel} {(5 * i) % 47}")
  for split in ("train800val200", "test"):
    with open(os.path.join(folder, f"{split}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("method", BASELINES)
def test_two_steps_on_image_folder(method, tiny_config, fast_compile, tmp_path):
  _folder_dataset(tmp_path / "data")
  config = vtab_config(tiny_config, method, source="folder", root=str(tmp_path / "data"))
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  check_run(tmp_path / "run", config, results, num_eval=12)
