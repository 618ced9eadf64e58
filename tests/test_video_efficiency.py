"""GMACs per clip: the compiled per-view count of the `frames` model is T per-frame passes plus the attentive head
(no per-frame linear head), and the video task reports per view, per video (x views) and clips/s."""

import jax
import jax.numpy as jnp
import pytest

from vit_adapt import config_lib, methods, tasks
from vit_adapt.efficiency import report as efficiency


def _models(frames=3):
  video, _ = config_lib.make_video_config("linear", "demo", video_model="frames")
  video.model.update(variant="mu/8", image_size=32, depth=2)
  video.video.num_frames = frames
  image, _ = config_lib.make_config("linear", "demo")
  image.model.update(variant="mu/8", image_size=32, depth=2)
  image.dataset.num_classes = video.dataset.num_classes
  return video, image


def test_frames_model_gmacs_per_view():
  video, image = _models(frames=3)
  out = {}
  for name, c in (("video", video), ("image", image)):
    model, method = methods.build_model(c)
    abstract = methods.abstract_variables(model, method, c)
    out[name] = efficiency.gmacs_per_example(model, abstract, tasks.for_config(c).example_input(c, 1)) * 1e9
  d, classes, t, n = 32, video.dataset.num_classes, 3, 1 + 16
  m = t * n
  head = d * d + 2 * m * d * d + 2 * m * d + d * d + d * classes  # q, k, v, QK^T, AV, proj, classifier
  head += 5 * d * (1 + 2 * m)  # LayerNorms of the query and of the m keys and values (fvcore: 5 per element)
  assert out["video"] == pytest.approx(t * (out["image"] - d * classes) + head, rel=1e-9)


def test_video_efficiency_fields():
  video, _ = _models()
  video.video.update(temporal_views=3, spatial_views=2)
  fields = tasks.get("video").efficiency_fields(video, {"gmacs_per_image": 1.5, "throughput_images_per_s": 40.0})
  assert fields == {"views_per_video": 6, "num_frames": 3, "gmacs_per_view": 1.5, "gmacs_per_video": 9.0,
                    "throughput_clips_per_s": 40.0}
  assert tasks.for_config(video).example_input(video, 2) == jax.ShapeDtypeStruct((2, 3, 32, 32, 3), jnp.float32)
