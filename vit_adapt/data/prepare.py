r"""Prepare tfds datasets in the ArrayRecord format the grain pipeline reads.

  python -m vit_adapt.data.prepare --task=vtab/dtd --data_dir=~/tensorflow_datasets
  python -m vit_adapt.data.prepare --task=all --data_dir=DIR         # the 19 VTAB-1k tasks
  python -m vit_adapt.data.prepare --task=all --data_dir=DIR --dry_run  # list what would be done

Tasks sharing a tfds dataset (CLEVR, dSprites, smallNORB) are prepared once. Resisc45 and Diabetic Retinopathy
cannot be downloaded automatically: the command prints exactly what to download and where to put it, and
prepares them once the files are there. A dataset already prepared as tfrecord is reported with how to redo it.
"""

from __future__ import annotations

import os

from absl import flags, logging

from vit_adapt.data import datasets
from vit_adapt import cli
from vit_adapt.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """CLI flags, defined only when run as a program so importing this module (tests, other CLIs) adds none."""
  flags.DEFINE_string("task", None, "vtab/<task>, a complete dataset name, or 'all' (the 19 VTAB-1k tasks).")
  flags.DEFINE_string("data_dir", None, "tfds data dir to prepare into (config.dataset.data_dir).")
  flags.DEFINE_bool("dry_run", False, "Only print what would be prepared.")

# Datasets whose source files must be placed by hand, keyed by the tfds name prefix: (what, where in manual dir).
MANUAL_DOWNLOADS = {
    "resisc45": (
        "NWPU-RESISC45.rar (31,500 images, 45 classes) from https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs "
        "(the link in the tfds resisc45 catalog)",
        "extract it so that {manual}/NWPU-RESISC45/<class name>/*.jpg exists"),
    "diabetic_retinopathy_detection": (
        "train.zip.001-005, test.zip.001-007, sample.zip and trainLabels.csv.zip from "
        "https://www.kaggle.com/c/diabetic-retinopathy-detection/data (Kaggle account, accept the rules; "
        "`kaggle competitions download -c diabetic-retinopathy-detection`)",
        "join and unzip them so that {manual}/train/*.jpeg, {manual}/test/*.jpeg, {manual}/sample/*.jpeg and "
        "{manual}/trainLabels.csv exist (the test labels are fetched by tfds). Preparing the btgraham-300 config "
        "takes hours"),
    "cars196": (
        "cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat (Stanford Cars; the "
        "original ai.stanford.edu URLs are offline, use a mirror)",
        "put them in {manual}/ (tfds looks there before downloading)"),
}


def manual_dir(data_dir: str) -> str:
  return os.path.join(data_dir, "downloads", "manual")


def manual_instructions(tfds_name: str, data_dir: str) -> str | None:
  """What to download and where to put it, for datasets tfds cannot fetch itself; None otherwise."""
  key = tfds_name.split(":")[0].split("/")[0]
  if key not in MANUAL_DOWNLOADS:
    return None
  what, where = MANUAL_DOWNLOADS[key]
  return (f"{tfds_name} needs a manual download.\n  1. Download {what}.\n  2. "
          f"{where.format(manual=manual_dir(data_dir))}.\n  3. Re-run this command.")


def tfds_names(task_arg: str) -> list[tuple[str, list[str]]]:
  """--task value -> [(tfds name, [task names using it])], each tfds dataset once, in task order."""
  names = datasets.VTAB_1K if task_arg == "all" else (task_arg,)
  out: dict[str, list[str]] = {}
  for name in names:
    task = datasets.get_dataset(name)
    if task.tfds_name is None:
      raise UserError(f"task {name!r} has no tensorflow_datasets builder ({task.note or task.kind}); nothing to "
                      "prepare.")
    out.setdefault(task.tfds_name, []).append(name)
  return list(out.items())


def _manual_files_present(data_dir: str) -> bool:
  path = manual_dir(data_dir)
  return os.path.isdir(path) and bool(os.listdir(path))


def prepare(tfds_name: str, data_dir: str) -> str:
  """Prepares one dataset as ArrayRecord; returns a status line. Raises UserError with the fix on failure."""
  try:
    import tensorflow_datasets as tfds
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except ModuleNotFoundError as e:
    raise UserError(f"tensorflow_datasets cannot load ({e}). Install the data dependencies: "
                    "pip install tensorflow-cpu tensorflow-datasets importlib_resources") from None
  if builder.is_prepared():
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
    if str(fmt) != "array_record":
      raise UserError(f"{builder.data_dir} holds {tfds_name} prepared as {fmt}; grain needs ArrayRecord. Delete "
                      f"that directory (or choose another --data_dir) and re-run this command.")
    return f"{tfds_name}: already prepared (array_record) in {builder.data_dir}"
  instructions = manual_instructions(tfds_name, data_dir)
  if instructions and not _manual_files_present(data_dir):
    raise UserError(instructions)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir(data_dir))
  try:
    builder.download_and_prepare(file_format="array_record", download_config=config)
  except Exception as e:  # downloads fail in many ways (network, checksums, missing manual files)
    hint = f"\n{instructions}" if instructions else ""
    raise UserError(f"preparing {tfds_name} into {data_dir} failed: {type(e).__name__}: {e}{hint}") from None
  return f"{tfds_name}: prepared (array_record) in {builder.data_dir}"


def main(argv):
  del argv
  if not FLAGS.task or not FLAGS.data_dir:
    raise UserError("--task (vtab/<task>, a dataset name, or 'all') and --data_dir are required, e.g. "
                    "python -m vit_adapt.data.prepare --task=vtab/dtd --data_dir=~/tensorflow_datasets")
  data_dir = os.path.expanduser(FLAGS.data_dir)
  todo = tfds_names(FLAGS.task)
  failures = []
  for tfds_name, users in todo:
    if FLAGS.dry_run:
      manual = manual_instructions(tfds_name, data_dir)
      print(f"{tfds_name} ({', '.join(users)})" + (f"\n  {manual}" if manual else ""))
      continue
    logging.info("preparing %s for %s", tfds_name, ", ".join(users))
    try:
      print(prepare(tfds_name, data_dir), flush=True)
    except UserError as e:
      if len(todo) == 1:
        raise
      failures.append(f"{tfds_name}: {e}")
  if failures:
    raise UserError(f"{len(failures)} of {len(todo)} datasets were not prepared:\n" + "\n".join(failures))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
