"""The `tubelet` video model loads VideoMAE-format `.pth` checkpoints (tensors only) and gives the logits of an
independent PyTorch VideoMAE of the same architecture (tests/videomae_reference.py); pre-training checkpoints
(`encoder.` + decoder) load too; Sparse-Tuning runs on it without a class token."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import videomae_reference  # noqa: E402

from vit_adapt import config_lib, methods  # noqa: E402
from vit_adapt.errors import UserError  # noqa: E402

ARCH = dict(size=32, patch=8, frames=4, tubelet=2, width=48, depth=2, heads=3, mlp=96, classes=7)


def _config(method="linear", init=""):
  c, _ = config_lib.make_video_config(method, "demo", video_model="tubelet")
  c.model.update(variant="Ti/8", width=48, depth=2, num_heads=3, mlp_dim=96, image_size=32, init=init)
  c.video.num_frames = 4
  c.dataset.num_classes = 7
  return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  model = videomae_reference.seeded(**ARCH)
  clips = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    logits = model(clips).numpy()
  path = str(tmp_path_factory.mktemp("videomae") / "videomae_finetuned.pth")
  torch.save({"model": model.state_dict()}, path)  # the release nests the weights under 'model'
  return path, clips.numpy().transpose(0, 2, 3, 4, 1), logits, model


def _logits(config, clips):
  model, method = methods.build_model(config)
  variables = methods.init_variables(model, method, config)
  return jax.jit(lambda v, x: model.apply(v, x)[0])(variables, jnp.asarray(clips)), variables


def test_finetuned_checkpoint_matches_pytorch_videomae(reference):
  path, clips, ref, _ = reference
  logits, _ = _logits(_config(init=path), clips)
  assert float(np.linalg.norm(np.asarray(logits) - ref) / np.linalg.norm(ref)) <= 1e-4


def test_pretraining_checkpoint_loads_encoder(reference, tmp_path):
  path, clips, _, model = reference
  sd = {f"encoder.{k}": v for k, v in model.state_dict().items() if not k.startswith(("fc_norm", "head"))}
  sd.update({"encoder.norm.weight": torch.ones(48), "encoder.norm.bias": torch.zeros(48),
             "decoder.blocks.0.norm1.weight": torch.ones(8), "mask_token": torch.zeros(1, 1, 8)})
  pre = str(tmp_path / "videomae_pretrain.pth")
  torch.save({"model": sd}, pre)
  _, variables = _logits(_config(init=pre), clips)
  p = variables["params"]
  np.testing.assert_allclose(p["fc_norm"]["scale"], 1.0)  # fresh fc_norm, as VideoMAE's fine-tuning starts it
  kernel = model.state_dict()["patch_embed.proj.weight"].numpy().transpose(2, 3, 4, 1, 0)
  np.testing.assert_array_equal(p["embedding"]["kernel"], kernel)


def test_learned_positions_are_refused(reference, tmp_path):
  _, _, _, model = reference
  sd = dict(model.state_dict())
  sd["pos_embed"] = torch.zeros(1, 32, 48)
  bad = str(tmp_path / "learned.pth")
  torch.save(sd, bad)
  with pytest.raises(UserError, match="learned position"):
    _logits(_config(init=bad), np.zeros((1, 4, 32, 32, 3), np.float32))


def test_sparse_tuning_on_tubelets_without_class_token(reference):
  path, clips, _, _ = reference
  c = _config("sparse_tuning", init=path)
  c.method.update(sparse_blocks=(1,), keep_rate=0.7, bottleneck=8, token_score="mean_attention")
  model, method = methods.build_model(c)
  variables = methods.init_variables(model, method, c)
  logits, out = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(clips))
  assert logits.shape == (2, 7)
  assert out["kept_idx_1"].shape == (2, 23)  # ceil(0.7 * 32): every tubelet token is a candidate
  c.method.token_score = "cls_attention"
  with pytest.raises(UserError, match="needs a class token"):
    methods.build_model(c)
  c.video.class_token = True  # an added (zero-initialised) score token
  model, method = methods.build_model(c)
  assert model.class_token
