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
from safetensors.numpy import save_file
from test_cli_errors import assert_clean_failure, random_backbone, run, save_npz

from vit_adapt import checkpoints, convert
from vit_adapt.data import images
from vit_adapt.errors import UserError

# A 1-block ViT at 32 px with 16 px patches: a 2x2 grid, small enough that a ViT-Ti width converts in seconds.
TIMM_CONFIG = ["--config=configs/linear_vtab.py:demo", "--config.model.depth=1", "--config.model.image_size=32"]


def timm_state_dict(width: int, mlp_dim: int, depth: int = 1, patch: int = 16, grid: int = 2, classes: int = 10,
                    seed: int = 0) -> dict:
  """A random timm-layout ViT state dict (fused qkv: the head count is not in the file)."""
  rng = np.random.RandomState(seed)
  w = lambda *shape: rng.normal(0, 0.02, shape).astype(np.float32)
  sd = {"cls_token": w(1, 1, width), "pos_embed": w(1, grid * grid + 1, width),
        "patch_embed.proj.weight": w(width, 3, patch, patch), "patch_embed.proj.bias": w(width),
        "norm.weight": w(width), "norm.bias": w(width), "head.weight": w(classes, width), "head.bias": w(classes)}
  for i in range(depth):
    b = f"blocks.{i}."
    sd.update({b + "norm1.weight": w(width), b + "norm1.bias": w(width), b + "norm2.weight": w(width),
               b + "norm2.bias": w(width), b + "attn.qkv.weight": w(3 * width, width),
               b + "attn.qkv.bias": w(3 * width), b + "attn.proj.weight": w(width, width),
               b + "attn.proj.bias": w(width), b + "mlp.fc1.weight": w(mlp_dim, width), b + "mlp.fc1.bias": w(mlp_dim),
               b + "mlp.fc2.weight": w(width, mlp_dim), b + "mlp.fc2.bias": w(width)})
  return sd


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


# ---------------------------------------------------------------------------------------------- 4: timm variant

@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("timm")
  save_file(timm_state_dict(192, 768), str(d / "ti.safetensors"))  # ViT-Ti width: 3 heads in the real model
  save_file(timm_state_dict(48, 192), str(d / "odd.safetensors"))  # no standard ViT has width 48
  return d


def test_timm_file_of_another_variant_advises_the_variant(timm_files):
  r = run("convert", "--source=timm", f"--checkpoint={timm_files / 'ti.safetensors'}", *TIMM_CONFIG,
          "--config.model.variant=S/16", f"--out={timm_files / 'o1'}")
  assert_clean_failure(r, "width=192", "head count is not stored", "Pass --config.model.variant=Ti/16.")
  assert "num_heads=6" not in r.stderr and "--config.model.width" not in r.stderr
  # The advice converts into the right model: 3 heads, as ViT-Ti has.
  r = run("convert", "--source=timm", f"--checkpoint={timm_files / 'ti.safetensors'}", *TIMM_CONFIG,
          "--config.model.variant=Ti/16", f"--out={timm_files / 'o2'}")
  assert r.returncode == 0, r.stderr[-2000:]
  cfg = json.load(open(timm_files / "o2" / "config.json"))
  assert cfg["model"]["variant"] == "Ti/16" and cfg["model"]["num_heads"] == 0


def test_timm_width_override_with_wrong_heads_is_refused(timm_files):
  """The old advice (S/16 with width/mlp overrides) built a 6-head model from a 3-head file: now refused."""
  assert_clean_failure(run("convert", "--source=timm", f"--checkpoint={timm_files / 'ti.safetensors'}",
                           *TIMM_CONFIG, "--config.model.variant=S/16", "--config.model.width=192",
                           "--config.model.mlp_dim=768", f"--out={timm_files / 'o3'}"),
                       "ViT-Ti/16's, which has 3 heads", "builds S/16 with 6 heads", "--config.model.variant=Ti/16")
  assert not os.path.exists(timm_files / "o3" / "meta.json")


def test_timm_non_standard_width_asks_for_the_head_count(timm_files):
  assert_clean_failure(run("convert", "--source=timm", f"--checkpoint={timm_files / 'odd.safetensors'}",
                           *TIMM_CONFIG, "--config.model.variant=S/16", f"--out={timm_files / 'o4'}"),
                       "--config.model.width=48 --config.model.mlp_dim=192 --config.model.num_heads=N",
                       "head count cannot be inferred")


# ---------------------------------------------------------------------------------------------- 6: NaN weights

@pytest.fixture(scope="module")
def nan_files(files):
  d = files["dir"]
  params = random_backbone()
  params["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"][3, 5] = np.nan
  nan_npz = save_npz(params, d / "nan.npz")
  sd = timm_state_dict(32, 128)
  sd["blocks.0.attn.proj.weight"][0, 0] = np.inf
  save_file(sd, str(d / "inf.safetensors"))
  return dict(npz=nan_npz, timm=str(d / "inf.safetensors"))


def test_convert_refuses_nan_weights(files, nan_files):
  r = run("convert", "--source=npz", f"--checkpoint={nan_files['npz']}", "--config=configs/linear_vtab.py:demo",
          "--config.model.variant=mu/8", "--config.model.depth=2", f"--out={files['dir'] / 'nan_out'}")
  assert_clean_failure(r, nan_files["npz"], "'Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel'", "1 NaN")
  assert not os.path.exists(files["dir"] / "nan_out" / "meta.json")


def test_read_tensors_refuses_inf_in_safetensors(nan_files):
  with pytest.raises(UserError, match=r"inf\.safetensors: tensor 'blocks\.0\.attn\.proj\.weight' .* 1 inf"):
    checkpoints.read_tensors(nan_files["timm"])


def test_model_init_with_nan_weights_fails_at_start(files, nan_files):
  workdir = files["dir"] / "nan_run"
  r = run("main", "--config=configs/linear_vtab.py:demo", "--config.model.variant=mu/8", "--config.model.depth=2",
          "--config.model.image_size=32", f"--config.model.init={nan_files['npz']}", "--config.train.steps=2",
          "--config.efficiency.enabled=False", f"--workdir={workdir}")
  assert_clean_failure(r, nan_files["npz"], "'Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel'", "NaN")
  assert "learning rate" not in r.stderr
  assert not os.path.exists(workdir / "results.json")


def test_predict_refuses_a_model_directory_with_nan_weights(files):
  from vit_adapt.checkpoints import model_dir
  directory, _ = model_dir.open_dir(files["model"])
  variables = model_dir.restore(directory)
  variables["params"]["head"]["bias"][0] = np.nan
  bad = model_dir.save(files["dir"] / "nan_model", model_dir.read_config(directory), variables)
  np.save(files["dir"] / "x.npy", np.zeros((2, 32, 32, 3), np.uint8))
  assert_clean_failure(run("predict", f"--checkpoint={bad}", f"--array={files['dir'] / 'x.npy'}"),
                       "nan_model/variables: tensor 'params/head/bias'", "1 NaN")


# ---------------------------------------------------------------------------------------------- 7: config ranges

@pytest.mark.parametrize("override,needle", [
    ("train.batch_size=0", "config.train.batch_size=0 is out of range: it must be > 0"),
    ("train.batch_size=-4", "config.train.batch_size=-4 is out of range: it must be > 0"),
    ("train.steps=-5", "config.train.steps=-5 is out of range: it must be >= 0"),
    ("optim.lr=-0.1", "config.optim.lr=-0.1 is out of range: it must be > 0"),  # 9: a negative learning rate
])
def test_out_of_range_config_numbers_exit_2_naming_the_key(tmp_path, override, needle):
  r = run("main", "--config=configs/linear_vtab.py:demo", f"--config.{override}", f"--workdir={tmp_path / 'w'}")
  assert_clean_failure(r, needle)


@pytest.mark.parametrize("key,value,allowed", [
    ("train.batch_size", 0, "> 0"), ("eval.batch_size", 0, "> 0"), ("efficiency.batch_size", -1, "> 0"),
    ("optim.lr", 0.0, "> 0"), ("optim.lr", float("nan"), "> 0"), ("optim.min_lr", -1e-5, ">= 0"),
    ("train.epochs", -1, ">= 0"), ("train.warmup_epochs", -2, ">= 0"), ("model.image_size", 0, "> 0"),
    ("dataset.label_smoothing", 1.0, "in [0, 1)"), ("model.dropout", 1.0, "in [0, 1)"),
    ("model.drop_path", -0.1, "in [0, 1)"), ("train.keep_checkpoints", -1, ">= 0"),
    ("dataset.num_classes", 0, ">= 1"),
])
def test_validate_checks_every_number_range(key, value, allowed):
  from vit_adapt import config_lib
  c = make_tiny_config("linear")
  config_lib.validate(c)  # the tiny config itself is valid
  block, field = key.split(".")
  c[block][field] = value
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert f"config.{key}=" in str(e.value) and allowed in str(e.value)


# ---------------------------------------------------------------------------------------------- 7: files

@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_damaged_meta_json_is_a_user_error_naming_it(files, tmp_path, content):
  import shutil
  d = tmp_path / "model"
  shutil.copytree(files["model"], d)
  (d / "meta.json").write_text(content)
  assert_clean_failure(run("predict", f"--checkpoint={d}", f"--images={tmp_path}"), f"{d}/meta.json",
                       "model directory is damaged" if content.startswith("[") else "not readable JSON")


@pytest.mark.parametrize("flag", ["output", "logits"])
def test_predict_output_into_a_missing_folder_fails_before_inference(files, tmp_path, flag):
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
  target = tmp_path / "no_such_folder" / "out.file"
  r = run("predict", f"--checkpoint={files['model']}", f"--images={tmp_path / 'a.png'}", f"--{flag}={target}")
  assert_clean_failure(r, f"--{flag}={target}", f"the folder {tmp_path / 'no_such_folder'} does not exist")
  assert "predicted" not in r.stderr  # nothing was computed


def _results(root, name, res):
  d = root / "vtab" / "dtd" / "linear_vtab" / name
  d.mkdir(parents=True)
  (d / "results.json").write_text(json.dumps(res))


def test_report_drops_invalid_results_with_a_warning_and_a_note(tmp_path):
  base = dict(task="vtab/dtd", method="linear", trainable_params=1000, gmacs_per_image=1.0,
              throughput_images_per_s=10.0, batch_size=8, dtype="float32", device="cpu")
  _results(tmp_path, "seed=0", dict(base, top1=0.5, seed=0))
  _results(tmp_path, "seed=1", dict(base, top1="0.9", seed=1))  # a string
  _results(tmp_path, "seed=2", [dict(base, top1=0.7, seed=2)])  # a JSON list
  _results(tmp_path, "seed=3", dict(base, top1=87.5, seed=3))  # a percentage, not a fraction
  r = run("report", str(tmp_path), "--noplots")
  assert r.returncode == 0, r.stderr[-2000:]
  for name, why in (("seed=1", "top1 is '0.9', not a number"), ("seed=2", "it holds a JSON list, not an object"),
                    ("seed=3", "top1=87.5 is outside [0, 1]")):
    assert f"warning: skipping {tmp_path}/vtab/dtd/linear_vtab/{name}/results.json: {why}" in r.stderr
    assert f"- vtab/dtd/linear_vtab/{name}/results.json: {why}" in r.stdout
  assert "Dropped 3 invalid results file(s)" in r.stdout
  assert "| linear_vtab | – | – | 50.0 |" in r.stdout  # dtd: the one valid run only (no ± over seeds)
  table = (tmp_path / "report" / "table.md").read_text()
  assert "Dropped 3 invalid results file(s)" in table


def test_report_with_only_invalid_results_is_an_error(tmp_path):
  _results(tmp_path, "seed=0", {"task": "vtab/dtd", "top1": "high"})
  assert_clean_failure(run("report", str(tmp_path), "--noplots"), "no valid results.json",
                       "top1 is 'high', not a number")


# ---------------------------------------------------------------------------------------------- 9: polish

def test_unknown_config_key_message_is_plain_text(files):
  r = run("convert", "--source=npz", f"--checkpoint={files['good']}", "--config=configs/linear_vtab.py:demo",
          "--config.model.variantt=S/16", f"--out={files['dir'] / 'o9'}")
  assert_clean_failure(r, "--config has no field 'variantt' (--config.model.variantt). "
                       'Did you mean "variant" instead of "variantt"?')
  assert "\\" not in r.stderr.split("error: ", 1)[1]


def test_folder_source_error_reads_as_one_sentence(tmp_path):
  r = run("main", "--config=configs/linear_vtab.py:task=vtab/dtd", "--config.dataset.source=folder",
          f"--config.dataset.root={tmp_path / 'no_such_root'}", f"--workdir={tmp_path / 'w'}")
  assert_clean_failure(r, "(config.dataset.root) does not exist. Point the run at the folder release with")
  assert ".." not in r.stderr.replace(str(tmp_path), "")
  assert "--config.dataset.data_dir=<data_dir>, or use the image-folder" not in r.stderr  # the tfds hint


def test_pth_refusal_does_not_advise_weights_only_false(tmp_path):
  torch = pytest.importorskip("torch")
  from vit_adapt.checkpoints import readers
  from test_cli_errors import Payload
  torch.save({"model": {"w": torch.zeros(2)}, "hook": Payload()}, str(tmp_path / "evil.pth"))
  with pytest.raises(UserError) as e:
    readers.read_tensors(str(tmp_path / "evil.pth"))
  msg = str(e.value)
  assert "test_cli_errors.Payload" in msg and "never unpickles" in msg and "Re-save it with tensors only" in msg
  assert "weights_only=False" not in msg and "weights_only` set to `False`" not in msg and "\x1b[" not in msg
  (tmp_path / "junk.pth").write_bytes(b"not a torch file " * 8)
  with pytest.raises(UserError) as e:
    readers.read_tensors(str(tmp_path / "junk.pth"))
  assert "junk.pth is not a PyTorch state dict" in str(e.value) and "False" not in str(e.value)


def test_non_npy_array_is_not_called_pickled(files, tmp_path):
  path = tmp_path / "images.npy"
  path.write_text("these are not pixels\n")
  r = run("predict", f"--checkpoint={files['model']}", f"--array={path}")
  assert_clean_failure(r, f"--array={path} is not a .npy array file", "np.save")
  assert "pickle" not in r.stderr
