"""The BEiT pyramid, the UperNet head and the FCN head equal a plain-PyTorch reference of the same architecture
(written here from the BEiT / UperNet descriptions) on shared weights, in evaluation and in training mode
(batch statistics); the sliding window equals a direct forward where it should; mIoU of a known matrix."""

import numpy as np
import pytest
import torch
from torch import nn as tnn
from torch.nn import functional as F

import jax
import jax.numpy as jnp

from vit_adapt.models import dense, upernet
from vit_adapt.tasks import segmentation


class TorchConvModule(tnn.Module):
  def __init__(self, cin, cout, k):
    super().__init__()
    self.conv = tnn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    self.bn = tnn.BatchNorm2d(cout)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class TorchHead(tnn.Module):
  """Pyramid + UperNet + FCN in NCHW with PyTorch's own ops."""

  def __init__(self, d, ch, aux_ch, nc, scales=(1, 2, 3, 6)):
    super().__init__()
    self.fpn1 = tnn.Sequential(tnn.ConvTranspose2d(d, d, 2, 2), tnn.GELU(), tnn.ConvTranspose2d(d, d, 2, 2))
    self.fpn2 = tnn.ConvTranspose2d(d, d, 2, 2)
    self.scales = scales
    self.psp = tnn.ModuleList([TorchConvModule(d, ch, 1) for _ in scales])
    self.psp_bottleneck = TorchConvModule(d + len(scales) * ch, ch, 3)
    self.laterals = tnn.ModuleList([TorchConvModule(d, ch, 1) for _ in range(3)])
    self.fpns = tnn.ModuleList([TorchConvModule(ch, ch, 3) for _ in range(3)])
    self.fpn_bottleneck = TorchConvModule(4 * ch, ch, 3)
    self.cls = tnn.Conv2d(ch, nc, 1)
    self.aux_conv = TorchConvModule(d, aux_ch, 3)
    self.aux_cls = tnn.Conv2d(aux_ch, nc, 1)

  def forward(self, feats):
    up = lambda x, size: F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    levels = [self.fpn1(feats[0]), self.fpn2(feats[1]), feats[2], F.max_pool2d(feats[3], 2, 2)]
    top = levels[3]
    pooled = [top] + [up(m(F.adaptive_avg_pool2d(top, s)), top.shape[2:]) for s, m in zip(self.scales, self.psp)]
    lat = [m(x) for m, x in zip(self.laterals, levels[:3])] + [self.psp_bottleneck(torch.cat(pooled, 1))]
    for i in range(3, 0, -1):
      lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1].shape[2:])
    outs = [m(x) for m, x in zip(self.fpns, lat[:3])] + [lat[3]]
    fused = self.fpn_bottleneck(torch.cat([up(o, outs[0].shape[2:]) for o in outs], 1))
    return self.cls(fused), self.aux_cls(self.aux_conv(levels[2]))


def _t(x):
  return torch.from_numpy(np.asarray(x))


def _conv_module(m: TorchConvModule):
  w = m.conv.weight.detach().numpy().transpose(2, 3, 1, 0)
  params = {"conv": {"kernel": w}, "bn": {"scale": m.bn.weight.detach().numpy(), "bias": m.bn.bias.detach().numpy()}}
  stats = {"bn": {"mean": m.bn.running_mean.numpy(), "var": m.bn.running_var.numpy()}}
  return params, stats


def _deconv(m):
  return {"kernel": m.weight.detach().numpy().transpose(2, 3, 0, 1), "bias": m.bias.detach().numpy()}


def _conv1x1(m):
  return {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": m.bias.detach().numpy()}


def _to_flax(t: TorchHead):
  params, stats = {"pyramid": {"fpn1_0": _deconv(t.fpn1[0]), "fpn1_1": _deconv(t.fpn1[2]),
                               "fpn2": _deconv(t.fpn2)}, "decode": {}, "auxiliary": {}}, {"decode": {}, "auxiliary": {}}
  names = [(f"psp_{s}", m) for s, m in zip(t.scales, t.psp)] + [("psp_bottleneck", t.psp_bottleneck)]
  names += [(f"lateral_{i}", m) for i, m in enumerate(t.laterals)] + [(f"fpn_{i}", m) for i, m in enumerate(t.fpns)]
  names += [("fpn_bottleneck", t.fpn_bottleneck)]
  for name, m in names:
    params["decode"][name], stats["decode"][name] = _conv_module(m)
  params["decode"]["cls"] = _conv1x1(t.cls)
  params["auxiliary"]["conv_0"], stats["auxiliary"]["conv_0"] = _conv_module(t.aux_conv)
  params["auxiliary"]["cls"] = _conv1x1(t.aux_cls)
  return jax.tree.map(jnp.asarray, {"params": params, "batch_stats": stats})


@pytest.mark.parametrize("train", [False, True])
def test_head_matches_pytorch_reference(train):
  torch.manual_seed(0)
  d, ch, aux, nc, g = 16, 24, 8, 5, 8
  ref = TorchHead(d, ch, aux, nc).double()
  with torch.no_grad():  # non-trivial running statistics and affine parameters
    for m in ref.modules():
      if isinstance(m, tnn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
  ref.train(train)
  feats = [np.random.default_rng(i).normal(size=(2, g, g, d)) for i in range(4)]
  with torch.no_grad():
    want, want_aux = ref([_t(f).permute(0, 3, 1, 2) for f in feats])
  variables = _to_flax(ref)
  head = upernet.SegmentationHead(nc, d, channels=ch, aux_channels=aux, dropout=0.0, dtype=jnp.float64)
  with jax.enable_x64(True):
    x = [jnp.asarray(f, jnp.float64) for f in feats]
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    if train:
      (got, got_aux), _ = head.apply(variables, x, True, with_aux=True, mutable=["batch_stats"])
    else:
      got, got_aux = head.apply(variables, x, False, with_aux=True)
  for g_, w in ((got, want), (got_aux, want_aux)):
    w = w.permute(0, 2, 3, 1).numpy()
    assert g_.shape == w.shape
    rel = np.max(np.abs(np.asarray(g_) - w)) / np.max(np.abs(w))
    assert rel <= 1e-4, rel


def test_pyramid_strides():
  feats = [jnp.ones((1, 4, 4, 8))] * 4
  pyr = upernet.FeaturePyramid(8)
  levels = pyr.apply(pyr.init(jax.random.PRNGKey(0), feats), feats)
  assert [lv.shape[1] for lv in levels] == [16, 8, 4, 2]


def _toy_apply(x):
  # A per-pixel "model": the logits depend on the window content only through each pixel (so a sliding window
  # reproduces a direct forward exactly), plus a per-window statistic.
  logits = jnp.stack([x[..., 0], -x[..., 0], x[..., 1] * 2], axis=-1)
  return logits, {"gmacs": jnp.mean(x, axis=(1, 2, 3)), "ignored": jnp.zeros((x.shape[0], 3))}


@pytest.mark.parametrize("size", [(20, 20), (32, 32), (32, 57), (70, 45)])
def test_sliding_window_equals_direct_forward(size):
  images = jax.random.normal(jax.random.PRNGKey(1), (2, *size, 3))
  logits, stats = dense.slide_logits(_toy_apply, images, window=32, stride=21, window_batch=3)
  want, _ = _toy_apply(images)
  np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6)
  assert stats["gmacs"].shape == (2,) and "ignored" not in stats


def test_sliding_window_grid_is_mmseg():
  assert dense.window_starts(683, 512, 341) == [0, 171]
  assert dense.window_starts(512, 512, 341) == [0]
  assert dense.window_starts(1100, 512, 341) == [0, 341, 588]
  assert dense.window_starts(300, 512, 341) == [0]


def test_sliding_window_averages_overlaps():
  # Each window returns a constant: the overlap of windows at 0 and 16 (stride 16, window 32, size 48) averages.
  def apply(x):
    return jnp.broadcast_to(jnp.arange(x.shape[0], dtype=jnp.float32)[:, None, None, None], x.shape[:3] + (1,)), {}

  logits, _ = dense.slide_logits(apply, jnp.zeros((1, 32, 48, 3)), window=32, stride=16, window_batch=4)
  np.testing.assert_allclose(logits[0, 0, :, 0], [0.0] * 16 + [0.5] * 16 + [1.0] * 16)


def test_miou_of_known_confusion_matrix():
  cm = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
  m = segmentation.metrics_of_confusion(cm)
  # IoU: 3 / (4 + 3 - 3), 2 / (4 + 3 - 2), 0 / 2 (class 2 only predicted); accuracy leaves class 2 out (0 / 0)
  np.testing.assert_allclose(m["mIoU"], (3 / 4 + 2 / 5 + 0) / 3)
  np.testing.assert_allclose(m["mAcc"], (3 / 4 + 2 / 4) / 2)
  np.testing.assert_allclose(m["aAcc"], 5 / 8)


def test_confusion_matrix_masks_ignored_and_padding():
  logits = jax.nn.one_hot(jnp.array([[[0, 1], [2, 1]], [[0, 0], [0, 0]]]), 3)
  batch = {"label": jnp.array([[[0, 255], [2, 2]], [[1, 1], [1, 1]]]), "mask": jnp.array([True, False])}
  sums = segmentation.eval_sums(logits, batch)
  np.testing.assert_array_equal(sums["confusion"], [[1, 0, 0], [0, 0, 0], [0, 1, 1]])
  assert float(sums["count"]) == 1.0
