"""Trains one pack of runs in one compiled program (a job of `python -m vit_adapt.sweep --pack=K`):

  python -m vit_adapt.pack --pack=<workdir>/_packs/<...>/pack.json

What it does: `vit_adapt.train.packed` (the library entry point is `train_pack(configs, workdirs, pack_dir)`).
Exits 1 when a run of the pack stopped non-finite (its directory has `error.json`); the others have results.
"""

from absl import flags

from vit_adapt import cli
from vit_adapt.cli import compile_cache
from vit_adapt.errors import UserError
from vit_adapt.sweep.pack import run_pack_file

_PACK = flags.DEFINE_string("pack", None, "pack.json written by vit_adapt.sweep --pack=K.")
compile_cache.define_flag()


def main(argv):
  if len(argv) > 1 or not _PACK.value:
    raise UserError("usage: python -m vit_adapt.pack --pack=<dir>/pack.json")
  # The sweep's cache (passed in the environment): a pack of the same shapes as an earlier one (the next pack of
  # a sweep, a re-run) reads its compiled programs instead of compiling them again.
  compile_cache.enable(flags.FLAGS.compilation_cache)
  return 1 if run_pack_file(_PACK.value) else 0


if __name__ == "__main__":
  cli.run(main)
