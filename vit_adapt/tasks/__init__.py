"""Learning tasks by name: importing this package registers every task (one line each below).

  get(name) -> Task          the record the trainer, the evaluator and the efficiency report read
  for_config(config)         the task of a run: its dataset's (`config.dataset.name`)
"""

from vit_adapt.data import datasets
from vit_adapt.tasks import base
from vit_adapt.tasks import classification  # noqa: F401  (registration)
from vit_adapt.tasks import segmentation  # noqa: F401  (registration)
from vit_adapt.tasks import video  # noqa: F401  (registration)
from vit_adapt.tasks.base import Task  # noqa: F401

get = base.lookup
names = base.registered


def for_config(config) -> Task:
  return get(datasets.get_dataset(config.dataset.name).task)
