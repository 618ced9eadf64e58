"""Methods by name: importing this package registers every method (one line each below).

  get(name) -> Method        the record the trainer, the efficiency report and the sweep read
  build_model(config)        -> (model, method); init_variables, save_model_dir / load_model_dir (build.py)
"""

from vit_adapt.methods import base
from vit_adapt.methods import adapter, linear, lora, vpt  # noqa: F401  (registration)
from vit_adapt.methods import dyt  # noqa: F401  (registration)
from vit_adapt.methods import sparse_tuning  # noqa: F401  (registration)
from vit_adapt.methods import met  # noqa: F401  (registration)
from vit_adapt.methods import synqt  # noqa: F401  (registration)
from vit_adapt.methods.base import Method  # noqa: F401
from vit_adapt.models.params import merge_params, split_params  # noqa: F401  (split by `Method.trainable`)
from vit_adapt.methods.build import (  # noqa: F401
    abstract_variables, build_model, init_variables, load_model_dir, save_model_dir)

get = base.lookup
names = base.registered
