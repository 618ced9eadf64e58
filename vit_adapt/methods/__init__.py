"""Methods by name. Importing this package registers every method module below."""

from vit_adapt.methods import base
from vit_adapt.methods import adapter, linear, lora, vpt  # noqa: F401  (registration)
from vit_adapt.methods import dyt  # noqa: F401  (registration)
from vit_adapt.methods import sparse_tuning  # noqa: F401  (registration)
from vit_adapt.methods import met  # noqa: F401  (registration)
from vit_adapt.methods import synqt  # noqa: F401  (registration)
from vit_adapt.methods.base import Method, get, names, split_params, merge_params  # noqa: F401


def build_model(config, num_classes: int | None = None):
  """-> (model, method) for a full experiment config (`config.model`, `config.method`, `config.dataset`)."""
  from vit_adapt.models import vit
  method = get(config.method.name)
  n = num_classes if num_classes is not None else config.dataset.num_classes
  kwargs = vit.backbone_kwargs(config.model, n)
  kwargs.update(method.model_kwargs(config.method, kwargs))
  return method.model_cls(**kwargs), method


def init_variables(model, method, config, *, load_backbone: bool = True):
  """Initialises `model` from `config.seed` and loads the backbone checkpoint `config.model.init` (if set).

  Deterministic in the seed: a run whose frozen backbone is random (the demo) rebuilds the same weights when
  its adapter-only checkpoint is reloaded.
  """
  import jax
  import jax.numpy as jnp
  size = config.model.image_size
  rng = jax.random.PRNGKey(config.seed)
  rngs = {"params": rng, "dropout": rng, **{s: rng for s in method.rng_streams}}
  variables = jax.jit(model.init)(rngs, jnp.zeros((1, size, size, 3), jnp.float32))
  variables = dict(variables)
  params = variables["params"]
  if load_backbone and config.model.init:
    from vit_adapt import checkpoints
    params = checkpoints.load_backbone(config.model.init, params, config=config)
  if method.post_load is not None:
    params = method.post_load(params, config)
  variables["params"] = params
  return variables
