"""Bad input to `convert`, `predict` and the loader: a clear message and exit status 2, never a traceback.

The command lines run in subprocesses (what a user sees: stderr and the exit status); library-level errors
(`load_backbone`, the readers) are checked in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_config
from flax import traverse_util
from PIL import Image

from vit_adapt import checkpoints, convert
from vit_adapt.checkpoints import readers
from vit_adapt.errors import UserError
from vit_adapt.models import vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
TINY = ["--config=configs/linear_vtab.py:demo", "--config.model.variant=mu/8", "--config.model.depth=2"]


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"vit_adapt.{module}", *args], capture_output=True, text=True,
                        env=ENV, cwd=ROOT, timeout=600)


def assert_clean_failure(r: subprocess.CompletedProcess, *needles: str) -> None:
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "error: " in r.stderr
  for needle in needles:
    assert needle in r.stderr, (needle, r.stderr[-2000:])


def random_backbone(variant="mu/8", depth=2, image_size=32, num_classes=10, seed=0) -> dict:
  import ml_collections
  m = ml_collections.ConfigDict(dict(variant=variant, depth=depth, image_size=image_size))
  model = vit.VisionTransformer(**vit.backbone_kwargs(m, num_classes))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)


def save_npz(params, path) -> str:
  np.savez(path, **{k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()})
  return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("bad_inputs")
  good = save_npz(random_backbone(), d / "good.npz")
  data = open(good, "rb").read()
  open(d / "truncated.npz", "wb").write(data[:len(data) // 2])
  open(d / "corrupt.safetensors", "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
  np.savez(d / "pickled.npz", **{"embedding/kernel": np.array([{"os": "system"}], dtype=object)})
  model_dir = convert.convert("npz", good, make_tiny_config("linear"), str(d / "model"))
  return dict(dir=d, good=good, model=model_dir)


# ---------------------------------------------------------------------------------------------- convert

def test_missing_file(files):
  assert_clean_failure(run("convert", "--source=npz", "--checkpoint=/no/such/ViT-B_16.npz", *TINY,
                           f"--out={files['dir'] / 'o1'}"), "/no/such/ViT-B_16.npz does not exist")


def test_truncated_npz(files):
  path = files["dir"] / "truncated.npz"
  assert_clean_failure(run("convert", "--source=npz", f"--checkpoint={path}", *TINY, f"--out={files['dir'] / 'o2'}"),
                       str(path), "not a readable .npz")


def test_corrupt_safetensors(files):
  path = files["dir"] / "corrupt.safetensors"
  assert_clean_failure(run("convert", "--source=timm", f"--checkpoint={path}", *TINY, f"--out={files['dir'] / 'o3'}"),
                       str(path), "not a readable .safetensors")


def test_pickle_bearing_npz_is_refused(files):
  path = files["dir"] / "pickled.npz"
  assert_clean_failure(run("convert", "--source=npz", f"--checkpoint={path}", *TINY, f"--out={files['dir'] / 'o4'}"),
                       str(path), "pickled Python objects")


def test_wrong_architecture_for_config(files):
  r = run("convert", "--source=npz", f"--checkpoint={files['good']}", "--config=configs/linear_vtab.py:demo",
          f"--out={files['dir'] / 'o5'}")  # the demo config builds Ti/4 with 4 blocks
  assert_clean_failure(r, "the checkpoint is a ViT with width=32, depth=2", "the config builds Ti/4",
                       "--config.model.variant=mu/8 --config.model.depth=2")
  assert not os.path.exists(files["dir"] / "o5" / "meta.json")


def test_class_count_contradiction(files):
  assert_clean_failure(run("convert", "--source=npz", f"--checkpoint={files['good']}", *TINY,
                           "--config.dataset.num_classes=7", f"--out={files['dir'] / 'o6'}"),
                       "head has 10 classes", "--config.dataset.num_classes=10")


def test_unknown_source_lists_valid_ones(files):
  assert_clean_failure(run("convert", "--source=pytorch", f"--checkpoint={files['good']}", *TINY,
                           f"--out={files['dir'] / 'o7'}"), "'pytorch' is not a checkpoint source",
                       "npz", "timm", "official-")


@pytest.mark.parametrize("args,needle", [
    (["--config=configs/no_such_config.py"], "No such file"),
    (["--config=configs/linear_vtab.py:demo", "--config.model.no_such_field=1"], "no field 'no_such_field'"),
    (["--config=configs/linear_vtab.py:demo,no_such_arg=1"], "unknown config argument 'no_such_arg'"),
    (["--config=configs/linear_vtab.py:demo", "--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
])
def test_bad_command_line(files, args, needle):
  assert_clean_failure(run("convert", "--source=npz", f"--checkpoint={files['good']}", *args,
                           f"--out={files['dir'] / 'o8'}"), needle)


# ---------------------------------------------------------------------------------------------- predict

def test_missing_model_dir(files):
  assert_clean_failure(run("predict", f"--checkpoint={files['dir'] / 'nothing'}", f"--images={files['dir']}"),
                       "does not exist")


def test_empty_image_folder(files):
  empty = files["dir"] / "empty"
  empty.mkdir(exist_ok=True)
  assert_clean_failure(run("predict", f"--checkpoint={files['model']}", f"--images={empty}"), "matches no files")


def test_non_image_files_are_skipped_with_a_warning(files):
  folder = files["dir"] / "mixed"
  folder.mkdir(exist_ok=True)
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.png")
  (folder / "notes.txt").write_text("not an image")
  r = run("predict", f"--checkpoint={files['model']}", f"--images={folder}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "skipping" in r.stderr and "notes.txt" in r.stderr
  assert len(r.stdout.strip().splitlines()) == 1 and "a.png" in r.stdout


def test_only_non_image_files(files):
  folder = files["dir"] / "text_only"
  folder.mkdir(exist_ok=True)
  (folder / "readme.md").write_text("# hi")
  assert_clean_failure(run("predict", f"--checkpoint={files['model']}", f"--images={folder}"),
                       "none of the files is a readable image")


@pytest.mark.parametrize("array,needle", [
    (np.zeros((2, 32, 32, 3), np.float32), "dtype float32"),
    (np.zeros((2, 64, 64, 3), np.uint8), "shape (2, 64, 64, 3)"),
    (np.zeros((32, 32, 3), np.uint8), "shape (32, 32, 3)"),
])
def test_wrong_array(files, array, needle):
  path = files["dir"] / "bad.npy"
  np.save(path, array)
  assert_clean_failure(run("predict", f"--checkpoint={files['model']}", f"--array={path}"), needle)


# ---------------------------------------------------------------------------------------------- library

def test_load_backbone_lists_every_mismatch(tmp_path):
  """A Ti file for an S config: one error naming both architectures and every mis-shaped weight with shapes."""
  path = save_npz(random_backbone("Ti/16", depth=1), tmp_path / "ti.npz")
  target = random_backbone("S/16", depth=1)
  with pytest.raises(UserError) as e:
    checkpoints.load_backbone(path, target, config=None)
  msg = str(e.value)
  assert "holds a ViT Ti/16" in msg and "builds S/16" in msg
  assert "embedding/kernel (16, 16, 3, 192) vs (16, 16, 3, 384)" in msg
  assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel (192, 768) vs (384, 1536)" in msg
  n_weights = len(traverse_util.flatten_dict(target))
  assert msg.count(" vs (") == n_weights - 1  # every weight but head/bias (10,) differs in shape: each is listed


def test_pth_needs_torch(tmp_path, monkeypatch):
  path = tmp_path / "w.pth"
  path.write_bytes(b"PK")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(UserError, match="needs torch"):
    readers.read_tensors(str(path))


class Payload:
  """An arbitrary class: unpickling it would import and construct user code."""


def test_pickle_bearing_pth_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "evil.pth"
  torch.save({"model": {"w": torch.zeros(2)}, "hook": Payload()}, str(path))
  with pytest.raises(UserError, match="weights_only=True"):
    readers.read_tensors(str(path))


def test_not_a_vit_checkpoint(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, w=np.zeros(3))
  with pytest.raises(UserError, match="not a ViT checkpoint"):
    checkpoints.load_backbone(str(path), random_backbone(), config=None)


def test_bfloat16_safetensors_read_as_float32(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file
  save_file({"w": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, str(tmp_path / "bf16.safetensors"))
  w = readers.read_tensors(str(tmp_path / "bf16.safetensors"))["w"]
  assert w.dtype == np.float32 and w.tolist() == [1.5, -2.0]
