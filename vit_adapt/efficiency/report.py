"""The efficiency report: GMACs per image, trainable parameters, inference throughput, peak training memory.

Library (`report`, `gmacs_per_example`, `inference_throughput`) used by the trainer for `results.json`, and a CLI:

  python -m vit_adapt.efficiency --config=configs/adapter_vtab.py [--checkpoint=DIR] [--output=report.json]

GMACs are counted on the inference program before backend optimisation (`measure.py`: multiply-adds of every
dot/convolution XLA keeps; the papers' "GFLOPs"), so they describe what runs and are the same on every backend. For a method whose compute depends on the input
(DyT's token dispatch, MET's early exits) the method reports a per-example `gmacs` statistic from its inference
pass and the report gives its average over the evaluated images (`gmacs_source: 'eval_average'`); the trainer
does this on the eval split, the CLI does it when the data is available. Throughput: ahead-of-time compile,
warm-up, median of repeated timed calls, at a stated batch size and dtype on the stated device. Peak training
memory: XLA's memory analysis of the compiled training step (arguments + outputs + temporaries, donated buffers
counted once), per device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vit_adapt.efficiency import measure
from vit_adapt.models import vit


def inference_fn(model):
  return lambda variables, inputs: model.apply(variables, inputs, train=False)[0]


def gmacs_per_example(model, variables, example: jax.ShapeDtypeStruct) -> float:
  """Multiply-adds of one example (`example`: its input, batch 1) through the inference program.
  `variables` may be ShapeDtypeStructs."""
  return measure.lowered_gmacs(inference_fn(model), variables, example)


def gmacs_per_image(model, variables, image_size: int) -> float:
  """`gmacs_per_example` of one image (1, S, S, 3)."""
  return gmacs_per_example(model, variables, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))


def inference_throughput(model, variables, inputs: jax.ShapeDtypeStruct, *, repeats: int) -> dict:
  """Examples/s of the compiled inference path on a batch of zeros shaped like `inputs`."""
  batch = jnp.zeros(inputs.shape, inputs.dtype)
  return measure.throughput(inference_fn(model), variables, batch, batch_size=inputs.shape[0], repeats=repeats)


def report(config, model, variables, *, example_input, trainable, train_memory_bytes: int,
           eval_stats: dict | None = None, measure_throughput: bool = True, per_image=None) -> dict:
  """The efficiency numbers of one model. `variables` are real arrays (throughput needs them);
  `example_input(config, n)` is the model input of n examples (the task's, `Task.example_input`); `trainable`
  is the trainable tree (after the optimizer's policies); `train_memory_bytes` the compiled training step's
  peak (`vit_adapt.train.step.train_step_memory`, or the trainer's own compiled step). `per_image(config, model,
  variables, report, eval_stats) -> report` (a task's `efficiency`) turns the figures of one `example_input` into
  those of one evaluated image where they differ (segmentation's sliding windows)."""
  size = config.model.image_size
  program_gmacs = gmacs_per_example(model, variables, example_input(config, 1))
  out = {"gmacs_per_image": program_gmacs, "gmacs_source": "program"}
  if eval_stats and "gmacs" in eval_stats:
    # Input-dependent compute: the average the method measured over the evaluated images (as the papers do).
    out.update(gmacs_per_image=float(eval_stats["gmacs"]), gmacs_source="eval_average",
               gmacs_program=program_gmacs)
  out.update(trainable_params=vit.count_params(trainable), total_params=vit.count_params(variables["params"]))
  if measure_throughput:
    t = inference_throughput(model, variables, example_input(config, config.efficiency.batch_size),
                             repeats=config.efficiency.repeats)
    out.update(throughput_images_per_s=t["images_per_s"], throughput_median_batch_s=t["median_s"])
  out.update(batch_size=config.efficiency.batch_size, dtype=vit.resolve_dtype(config.model.dtype),
             device=measure.device_description(), image_size=size)
  out.update(peak_train_memory_bytes=int(train_memory_bytes), train_batch_size=config.train.batch_size)
  return per_image(config, model, variables, out, eval_stats) if per_image else out
