"""Linear probing and full fine-tuning: the plain backbone, differing only in what trains."""

import ml_collections

from vit_adapt.methods import base
from vit_adapt.models import vit


def _no_fields():
  return ml_collections.ConfigDict({"name": ""})


LINEAR = base.register(base.Method(
    name="linear", model_cls=vit.VisionTransformer, trainable=(r"^head/",), defaults=_no_fields,
    shares_frozen_features=True, doc="Linear probe: only the classification head trains."))

FULL = base.register(base.Method(
    name="full", model_cls=vit.VisionTransformer, trainable=(r".*",), defaults=_no_fields,
    doc="Full fine-tuning: every parameter trains."))
