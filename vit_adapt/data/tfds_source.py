"""tensorflow_datasets as a random-access grain source (ArrayRecord via `tfds.data_source`).

`tfds.data_source` reads datasets prepared with `file_format='array_record'` without building a tf.data graph, so
grain can shuffle, shard and checkpoint it by index. Images are read undecoded (`SkipDecoding`) and decoded with
PIL in the grain worker threads like every other source.
"""

from __future__ import annotations

import os

from vit_adapt.data.datasets import Dataset
from vit_adapt.errors import UserError


def prepare_command(task: Dataset, data_dir: str) -> str:
  return f"python -m vit_adapt.data.prepare --task={task.name} --data_dir={data_dir or '<data_dir>'}"


def _diagnose(task: Dataset, data_dir: str | None) -> UserError | None:
  """Turns tfds's failure to open a data source into what the user has to do, when we can tell."""
  import tensorflow_datasets as tfds  # imports TensorFlow: only on the tfds path

  builder = tfds.builder(task.tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    return UserError(
        f"task {task.name!r}: tfds dataset {task.tfds_name} is not prepared in "
        f"{data_dir or 'the default tfds data dir'} (looked for {builder.data_dir}). Run: "
        f"{prepare_command(task, data_dir)}" + (f". Note: {task.note}" if task.note else ""))
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  if str(file_format) != "array_record":
    return UserError(
        f"task {task.name!r}: {builder.data_dir} was prepared as {file_format}, but the grain pipeline needs "
        f"random access (ArrayRecord). Re-prepare it into a new data dir (or delete {builder.data_dir} first): "
        f"{prepare_command(task, data_dir)}")
  return None


class TfdsSource:
  """Random access to one split of a task: {'image': encoded bytes | uint8 array, 'label', 'where'}."""

  def __init__(self, task: Dataset, split: str, data_dir: str | None):
    self.task, self.split = task, split
    self.tfds_split = task.tfds_split(split)
    if data_dir and not os.path.isdir(data_dir):
      raise UserError(f"tfds data dir {data_dir!r} (config.dataset.data_dir) does not exist. Prepare the task "
                      f"into it first: {prepare_command(task, data_dir)}")
    import tensorflow_datasets as tfds  # imports TensorFlow: only on the tfds path

    decoders = None
    try:
      # Skip tfds's own image decoding for every image feature: we decode only the one we use, in grain threads.
      # (`download=False`: never start a multi-GB download from inside a training run.)
      builder = tfds.builder(task.tfds_name, data_dir=data_dir or None)
      features = builder.info.features
      if builder.is_prepared():
        decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                    if isinstance(f, tfds.features.Image)}
      self._source = tfds.data_source(task.tfds_name, split=self.tfds_split, data_dir=data_dir or None,
                                      decoders=decoders, download=False)
    except Exception as e:  # tfds raises assorted types (NotImplementedError, AssertionError, FileNotFoundError)
      if isinstance(e, UserError):
        raise
      diagnosis = _diagnose(task, data_dir or None)
      if diagnosis is not None:
        raise diagnosis from None
      raise

  def __len__(self) -> int:
    return len(self._source)

  def example(self, index: int) -> dict:
    """The tfds record (numpy features, images still encoded when the dataset is prepared)."""
    return self._source[index]

  def __getitem__(self, index: int) -> dict:
    ex = self.example(index)
    return {"image": ex[self.task.image_key], "label": self.task.label_fn(ex),
            "where": f"{self.task.tfds_name} split {self.tfds_split} record {index}"}

  def __repr__(self) -> str:
    return f"TfdsSource({self.task.tfds_name!r}, {self.tfds_split!r}, n={len(self)})"
