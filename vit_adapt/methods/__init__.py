"""Methods by name. Importing this package registers every method module below."""

from vit_adapt.methods import base
from vit_adapt.methods import adapter, linear, lora, vpt  # noqa: F401  (registration)
from vit_adapt.methods.base import Method, get, names, split_params, merge_params  # noqa: F401


def build_model(config, num_classes: int | None = None):
  """-> (model, method) for a full experiment config (`config.model`, `config.method`, `config.dataset`)."""
  from vit_adapt.models import vit
  method = get(config.method.name)
  n = num_classes if num_classes is not None else config.dataset.num_classes
  kwargs = vit.backbone_kwargs(config.model, n)
  kwargs.update(method.model_kwargs(config.method, kwargs))
  return method.model_cls(**kwargs), method
