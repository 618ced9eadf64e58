"""Checkpoint formats against timm, the reference PyTorch ViT: same random weights, same logits.

One random ViT-Ti/16 (224 px) is built with timm; its weights are written in every supported format (timm
.safetensors, a nested .pth, Hugging Face names, Google's original pre-Linen .npz, big_vision's native and
scan-stacked .npz) and loaded through `load_backbone`; the logits must match timm's to 1e-5 relative error
in float32. The pre-Linen .npz is also checked against timm's own .npz loader.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from timm_reference import import_timm

from vit_adapt import checkpoints
from vit_adapt.checkpoints import posemb, timm_vit
from vit_adapt.errors import UserError
from vit_adapt.models import vit

timm = import_timm()
torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402  (needs torch, imported after the skip)

NUM_CLASSES = 10
TI = dict(width=192, depth=12, mlp_dim=768, num_heads=3, patch_size=16)


def rel_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def perturb(model, seed=0):
  """timm's init has zero biases and unit LayerNorms; random everything so every weight matters."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=g) * 0.05)
  return model.eval()


def torch_logits(model, images):
  with torch.no_grad():
    return model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


def state_dict_np(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def to_google(sd: dict, num_heads: int, layout: str) -> dict:
  """Writes timm weights in a Google layout: 'pre_linen' (original/AugReg), 'big_vision' or 'scan'."""
  d = sd["cls_token"].shape[-1]
  dh = d // num_heads
  pre = layout == "pre_linen"
  mha, ln1, mlp = ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3") if pre else (
      "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
  out = {"cls": sd["cls_token"], "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "Transformer/encoder_norm/scale": sd["norm.weight"],
         "Transformer/encoder_norm/bias": sd["norm.bias"], "head/kernel": sd["head.weight"].T,
         "head/bias": sd["head.bias"]}
  if pre:
    out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    out["pre_logits/kernel"] = np.ones((d, d), np.float32)  # the i21k representation layer: must be dropped
    out["pre_logits/bias"] = np.ones((d,), np.float32)
  else:
    assert np.all(sd["pos_embed"][:, 0] == 0), "big_vision has no class-slot position embedding"
    out["pos_embedding"] = sd["pos_embed"][:, 1:]
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  blocks = []
  for i in range(depth):
    b = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
    blk = {"LayerNorm_0/scale": b("norm1.weight"), "LayerNorm_0/bias": b("norm1.bias"),
           f"{ln1}/scale": b("norm2.weight"), f"{ln1}/bias": b("norm2.bias"),
           f"{mha}/out/kernel": b("attn.proj.weight").T.reshape(num_heads, dh, d),
           f"{mha}/out/bias": b("attn.proj.bias"),
           f"{mlp}/Dense_0/kernel": b("mlp.fc1.weight").T, f"{mlp}/Dense_0/bias": b("mlp.fc1.bias"),
           f"{mlp}/Dense_1/kernel": b("mlp.fc2.weight").T, f"{mlp}/Dense_1/bias": b("mlp.fc2.bias")}
    for j, n in enumerate(("query", "key", "value")):
      blk[f"{mha}/{n}/kernel"] = b("attn.qkv.weight")[j * d:(j + 1) * d].T.reshape(d, num_heads, dh)
      blk[f"{mha}/{n}/bias"] = b("attn.qkv.bias")[j * d:(j + 1) * d].reshape(num_heads, dh)
    blocks.append(blk)
  if layout == "scan":
    for k in blocks[0]:
      out[f"Transformer/encoderblock/{k}"] = np.stack([blk[k] for blk in blocks])
  else:
    for i, blk in enumerate(blocks):
      out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
  if layout != "pre_linen":
    out = {f"params/{k}": v for k, v in out.items()}  # big_vision saves the model under 'params/'
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def to_hf(sd: dict) -> dict:
  """timm names -> Hugging Face transformers ViTForImageClassification names."""
  out = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
         "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
         "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
         "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
         "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
  d = sd["cls_token"].shape[-1]
  for k, v in sd.items():
    if not k.startswith("blocks."):
      continue
    _, i, rest = k.split(".", 2)
    p = f"vit.encoder.layer.{i}."
    if rest.startswith("attn.qkv."):
      kind = rest.rsplit(".", 1)[1]
      for j, n in enumerate(("query", "key", "value")):
        out[f"{p}attention.attention.{n}.{kind}"] = v[j * d:(j + 1) * d]
      continue
    for a, b in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
      if rest.startswith(a + "."):
        out[p + b + rest[len(a):]] = v
  return out


def make_config(image_size=224, num_classes=NUM_CLASSES, variant="Ti/16", depth=0):
  import ml_collections
  return ml_collections.ConfigDict({"model": {"variant": variant, "image_size": image_size, "depth": depth,
                                              "width": 0, "mlp_dim": 0, "num_heads": 0},
                                    "dataset": {"num_classes": num_classes}})


def init_params(model, image_size, seed=1):
  return jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, image_size, image_size, 3)))["params"]


@pytest.fixture(scope="module")
def reference():
  """The timm model, its weights, test images, timm's logits and our compiled Ti/16 forward."""
  torch.manual_seed(0)
  model = perturb(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES))
  images = np.random.RandomState(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  ours = vit.VisionTransformer(num_classes=NUM_CLASSES, image_size=224, **TI)
  return dict(model=model, sd=state_dict_np(model), images=images, logits=torch_logits(model, images),
              ours=ours, apply=jax.jit(ours.apply), init=init_params(ours, 224))


def our_logits(ref, path):
  params = checkpoints.load_backbone(str(path), ref["init"], config=make_config())
  return np.asarray(ref["apply"]({"params": params}, ref["images"])[0])


def test_timm_safetensors_parity(reference, tmp_path):
  path = tmp_path / "vit_tiny.safetensors"
  save_file({k: v.contiguous() for k, v in reference["model"].state_dict().items()}, str(path))
  assert rel_err(our_logits(reference, path), reference["logits"]) <= 1e-5


def test_torch_pth_nested_state_dict(reference, tmp_path):
  path = tmp_path / "ckpt.pth"
  torch.save({"model": reference["model"].state_dict(), "epoch": 3}, str(path))
  assert rel_err(our_logits(reference, path), reference["logits"]) <= 1e-5


def test_hugging_face_names(reference, tmp_path):
  path = tmp_path / "model.safetensors"
  save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_hf(reference["sd"]).items()}, str(path))
  assert rel_err(our_logits(reference, path), reference["logits"]) <= 1e-5


def test_google_pre_linen_npz_matches_timm_npz_loader(reference, tmp_path):
  path = tmp_path / "ViT-Ti_16.npz"
  np.savez(path, **to_google(reference["sd"], 3, "pre_linen"))
  # Expected output: a fresh timm model loaded by timm's own Google .npz loader.
  fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES).eval()
  fresh.load_pretrained(str(path))
  expected = torch_logits(fresh, reference["images"])
  assert rel_err(expected, reference["logits"]) <= 1e-5  # the writer above is right
  assert rel_err(our_logits(reference, path), expected) <= 1e-5


@pytest.mark.parametrize("layout", ["big_vision", "scan"])
def test_big_vision_layouts(reference, tmp_path, layout):
  # big_vision gives the class token no position embedding: zero timm's class slot to get the same function.
  model = reference["model"]
  with torch.no_grad():
    saved = model.pos_embed[:, 0].clone()
    model.pos_embed[:, 0] = 0
  try:
    expected = torch_logits(model, reference["images"])
    path = tmp_path / f"{layout}.npz"
    np.savez(path, **to_google(state_dict_np(model), 3, layout))
  finally:
    with torch.no_grad():
      model.pos_embed[:, 0] = saved
  assert rel_err(our_logits(reference, path), expected) <= 1e-5


def test_posemb_resampling_matches_timm():
  from timm.layers import resample_abs_pos_embed
  pe = np.random.RandomState(0).normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
  for g in (24, 7, 14):  # up, down and identity; bilinear without antialias, as timm's Google .npz loader
    ours = posemb.resample(pe, 1 + g * g)
    theirs = resample_abs_pos_embed(torch.from_numpy(pe), (g, g), num_prefix_tokens=1, interpolation="bilinear",
                                    antialias=False).numpy()
    assert ours.shape == (1, 1 + g * g, 8)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # torch interpolates in float32
    np.testing.assert_array_equal(ours[:, 0], pe[:, 0])  # class slot kept


def test_posemb_resampling_invariants():
  const = np.full((1, 1 + 16, 4), 3.0, np.float32)
  np.testing.assert_allclose(posemb.resample(const, 1 + 36), 3.0, rtol=1e-6)
  pe = np.random.RandomState(1).normal(size=(1, 1 + 9, 4)).astype(np.float32)
  np.testing.assert_array_equal(posemb.resample(pe, 10), pe)
  # Bilinear interpolation reproduces a linear ramp exactly wherever it does not extrapolate (14 -> 24 grid).
  r, c = np.meshgrid(np.arange(14.0), np.arange(14.0), indexing="ij")
  ramp = np.stack([2 * r - c, r + 3 * c], -1).reshape(1, 196, 2).astype(np.float32)
  up = posemb.resample(np.concatenate([np.zeros((1, 1, 2), np.float32), ramp], 1), 1 + 24 * 24)[0, 1:]
  src = (np.arange(24) + 0.5) * 14 / 24 - 0.5
  inside = (src >= 0) & (src <= 13)
  sr, sc = np.meshgrid(src, src, indexing="ij")
  want = np.stack([2 * sr - sc, sr + 3 * sc], -1)
  np.testing.assert_allclose(up.reshape(24, 24, 2)[inside][:, inside], want[inside][:, inside], atol=1e-5)


def test_load_at_higher_resolution_matches_timm(tmp_path):
  """A 224 px checkpoint loaded into a 384 px model: same logits as timm's resampling filter (bilinear mode)."""
  from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
  kw = dict(patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=NUM_CLASSES)
  src = perturb(VisionTransformer(img_size=224, **kw))
  path = tmp_path / "small.safetensors"
  save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
  big = VisionTransformer(img_size=384, **kw).eval()
  big.load_state_dict(checkpoint_filter_fn(src.state_dict(), big, interpolation="bilinear", antialias=False))
  images = np.random.RandomState(2).uniform(-1, 1, (1, 384, 384, 3)).astype(np.float32)
  ours = vit.VisionTransformer(num_classes=NUM_CLASSES, image_size=384, **{**TI, "depth": 2})
  params = checkpoints.load_backbone(str(path), init_params(ours, 384), config=make_config(384, depth=2))
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 24 * 24, 192)
  logits = np.asarray(jax.jit(ours.apply)({"params": params}, images)[0])
  assert rel_err(logits, torch_logits(big, images)) <= 1e-5


def test_head_reinitialised_on_class_change_and_kept_otherwise(reference, tmp_path, caplog):
  path = tmp_path / "vit_tiny.safetensors"
  save_file({k: v.contiguous() for k, v in reference["model"].state_dict().items()}, str(path))
  five = vit.VisionTransformer(num_classes=5, image_size=224, head_init_std=0.02, **TI)
  init = jax.eval_shape(five.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
  init = jax.tree_util.tree_map(lambda s: np.random.RandomState(0).normal(size=s.shape).astype(s.dtype), init)
  with caplog.at_level(logging.WARNING):
    params = checkpoints.load_backbone(str(path), init, config=make_config(num_classes=5))
  assert "freshly initialised for 5 classes" in caplog.text
  np.testing.assert_array_equal(params["head"]["kernel"], init["head"]["kernel"])
  np.testing.assert_array_equal(params["embedding"]["kernel"],
                                reference["sd"]["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  kept = checkpoints.load_backbone(str(path), reference["init"], config=make_config())
  np.testing.assert_array_equal(kept["head"]["kernel"], reference["sd"]["head.weight"].T)


def test_timm_to_params_reports_leftover(reference):
  sd = dict(reference["sd"])
  sd["blocks.0.ls1.gamma"] = np.ones(192, np.float32)  # layer scale: not in this backbone
  sd["adapter.down.weight"] = np.ones((8, 192), np.float32)
  params, leftover = timm_vit.timm_to_params(sd, num_heads=3)
  assert set(leftover) == {"blocks.0.ls1.gamma", "adapter.down.weight"}
  assert params["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (
      192, 3, 64)


def test_timm_posemb_without_class_slot_gets_a_zero_slot():
  pe = np.random.RandomState(0).normal(size=(1, 196, 8)).astype(np.float32)
  params, _ = timm_vit.timm_to_params({"pos_embed": pe}, num_heads=2)
  got = params["Transformer"]["posembed_input"]["pos_embedding"]
  assert got.shape == (1, 197, 8)
  np.testing.assert_array_equal(got[:, 0], 0)
  np.testing.assert_array_equal(got[:, 1:], pe)


def test_unknown_names_are_reported_together(reference, tmp_path):
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in reference["sd"].items()}
  sd["blocks.0.ls1.gamma"] = torch.ones(192)
  del sd["blocks.3.norm1.weight"]
  path = tmp_path / "odd.safetensors"
  save_file(sd, str(path))
  with pytest.raises(UserError) as e:
    checkpoints.load_backbone(str(path), reference["init"], config=make_config())
  msg = str(e.value)
  assert "1 missing" in msg and "encoderblock_3/LayerNorm_0/scale (192,)" in msg
  assert "1 unexpected" in msg and "blocks.0.ls1.gamma (192,)" in msg


class _RunsCode:
  def __reduce__(self):
    return (print, ("this must never run",))


def test_torch_training_checkpoint_with_argparse_namespace_loads_but_code_does_not(tmp_path):
  import argparse

  from vit_adapt.checkpoints import readers
  path = str(tmp_path / "checkpoint-99.pth")
  # What the official DyT / Sparse-Tuning training scripts save: weights, the epoch and their argparse.Namespace.
  torch.save({"model": {"w": torch.arange(3.0)}, "args": argparse.Namespace(lr=1e-3), "epoch": 99}, path)
  np.testing.assert_array_equal(readers.read_torch(path)["w"], [0.0, 1.0, 2.0])
  torch.save({"model": {"w": torch.arange(3.0)}, "args": _RunsCode()}, path)
  with pytest.raises(UserError, match="weights_only=True"):
    readers.read_torch(path)
