"""`predict --masks`: a folder of images -> palette PNG masks at each image's size, made by the task's evaluation
forward (sliding windows), and overlays; the demo config with a tiny randomly initialised model."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from PIL import Image

from vit_adapt import methods, predict
from vit_adapt.data import images as images_lib
from vit_adapt.data import segmentation_palette
from vit_adapt.errors import UserError
from vit_adapt.models import upernet
from vit_adapt.tasks import segmentation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"canvas": (48, 48), "small": (30, 40), "large": (64, 96)}  # (H, W); the demo's canvas is 48 x 48


def _config():
  spec = importlib.util.spec_from_file_location("dyt_ade20k", os.path.join(ROOT, "configs", "dyt_ade20k.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("demo")
  config.model.update(variant="mu/8", depth=2, feature_blocks=(0, 0, 1, 1), head_channels=8, aux_channels=8)
  config.method.bottleneck = 4
  return config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  config = _config()
  model, method = methods.build_model(config)
  variables = dict(methods.init_variables(model, method, config, load_backbone=False))
  # Random weights of a larger scale, so that the class map is not one class everywhere.
  rng = np.random.default_rng(3)  # numpy: one eager JAX op per leaf would compile one program each
  variables["params"] = jax.tree.map(lambda v: np.asarray(v) + rng.normal(0, 0.3, v.shape).astype(v.dtype),
                                     variables["params"])
  out = str(tmp_path_factory.mktemp("seg") / "model")
  methods.save_model_dir(out, config, variables, scope="full")
  return out


@pytest.mark.slow
def test_masks_are_the_eval_forward_argmax_at_each_image_size(model_dir, tmp_path):
  folder, masks = tmp_path / "imgs", tmp_path / "masks"
  folder.mkdir()
  masks.mkdir()
  rng = np.random.default_rng(0)
  for name, size in SIZES.items():
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"{name}.png")
  (folder / "notes.txt").write_text("not an image")  # skipped with a warning
  records = predict.predict_masks(model_dir, images=str(folder), masks=str(masks), overlay=True, batch_size=2)
  assert [os.path.basename(r["path"]) for r in records] == ["canvas.png", "large.png", "small.png"]
  assert sorted(os.listdir(masks)) == sorted([f"{n}.png" for n in SIZES] + [f"{n}_overlay.png" for n in SIZES])

  config, model, _, variables = methods.load_model_dir(model_dir)
  forward = jax.jit(lambda x: segmentation.eval_forward(model, variables, x)[0])
  palette = segmentation_palette.palette("demo/digit_scenes", 5)
  classes = set()
  for name, (h, w) in SIZES.items():
    png = Image.open(masks / f"{name}.png")
    assert png.mode == "P" and png.size == (w, h)
    np.testing.assert_array_equal(np.asarray(png.getpalette()[:15]).reshape(5, 3), palette)
    mask = np.asarray(png)
    image = images_lib.decode(str(folder / f"{name}.png"))
    x = images_lib.normalize(image, config.dataset.normalization)
    if name == "canvas":  # the evaluation's canvas itself: its eval forward, nothing resized
      expected = np.argmax(np.asarray(forward(x[None]))[0], -1)
    else:  # keep-ratio resize onto the canvas, eval forward, the image's part resized back (bilinear)
      rh, rw = (36, 48) if name == "small" else (32, 48)
      canvas = np.zeros((1, 48, 48, 3), np.float32)
      canvas[0, :rh, :rw] = images_lib.normalize(np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR)),
                                                 config.dataset.normalization)
      logits = np.asarray(forward(canvas))[:, :rh, :rw]
      expected = np.argmax(np.asarray(upernet.resize_bilinear(logits, (h, w)))[0], -1)
    np.testing.assert_array_equal(mask, expected)
    classes |= set(np.unique(mask).tolist())
    blended = np.asarray(Image.open(masks / f"{name}_overlay.png"))
    assert blended.shape == (h, w, 3)
    np.testing.assert_allclose(blended, 0.5 * image + 0.5 * palette[mask], atol=0.51)
  assert len(classes) > 1  # the check above compared real maps, not one class everywhere
  with pytest.raises(UserError, match="--masks=DIR"):  # the classifier's path refuses a segmentation model
    predict.predict(model_dir, images=str(folder))


def test_mask_errors_name_what_to_do(tmp_path):  # found before any model is loaded
  folder = tmp_path / "imgs"
  folder.mkdir()
  for ext in ("png", "jpg"):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"a.{ext}")
  with pytest.raises(UserError, match="named 'a'"):
    predict.predict_masks(str(tmp_path / "no_model"), images=str(folder), masks=str(tmp_path))
  with pytest.raises(UserError, match="not a folder"):
    predict.predict_masks(str(tmp_path / "no_model"), images=str(folder), masks=str(tmp_path / "missing"))
