"""Trains one group of runs that share frozen features (a job of `python -m vit_adapt.sweep`):

  python -m vit_adapt.shared_features --group=<workdir>/_shared/<...>/group.json

What it does: `vit_adapt.sweep.shared_features`.
"""

import json
import os

from absl import flags

from vit_adapt import cli
from vit_adapt.errors import UserError
from vit_adapt.sweep.shared_features import train_group

_GROUP = flags.DEFINE_string("group", None, "group.json written by vit_adapt.sweep.")


def main(argv):
  if len(argv) > 1 or not _GROUP.value:
    raise UserError("usage: python -m vit_adapt.shared_features --group=<dir>/group.json")
  with open(_GROUP.value) as f:
    spec = json.load(f)
  train_group(spec["runs"], os.path.dirname(os.path.abspath(_GROUP.value)))


if __name__ == "__main__":
  cli.run(main)
