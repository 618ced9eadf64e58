"""The efficiency report: GMACs per image, trainable parameters, inference throughput, peak training memory.

Library (`report`, `gmacs_per_image`, `train_step_memory`) used by the trainer for `results.json`, and a CLI:

  python -m vit_adapt.efficiency --config=configs/adapter_vtab.py [--checkpoint=DIR] [--output=report.json]

GMACs are counted on the compiled inference program (`efficiency_lib`: multiply-adds of every dot/convolution;
the papers' "GFLOPs"), so they describe what actually runs. For a method whose compute depends on the input
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

from vit_adapt.efficiency import measure as efficiency_lib
from vit_adapt.models import vit


def inference_fn(model):
  return lambda variables, images: model.apply(variables, images, train=False)[0]


def _images(batch: int, size: int):
  return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


def gmacs_per_image(model, variables, image_size: int) -> float:
  """Multiply-adds of one image through the compiled inference path. `variables` may be ShapeDtypeStructs."""
  return efficiency_lib.compiled_gmacs(inference_fn(model), variables, _images(1, image_size))


def inference_throughput(model, variables, image_size: int, *, batch_size: int, repeats: int) -> dict:
  images = jnp.zeros((batch_size, image_size, image_size, 3), jnp.float32)
  return efficiency_lib.throughput(inference_fn(model), variables, images, batch_size=batch_size,
                                   repeats=repeats)


def memory_of(compiled) -> int:
  """Peak bytes per device of a compiled program (arguments + outputs + temporaries - aliased/donated)."""
  m = compiled.memory_analysis()
  stats = efficiency_lib.MemoryStats(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                                     int(m.temp_size_in_bytes), int(getattr(m, "alias_size_in_bytes", 0)),
                                     int(m.generated_code_size_in_bytes))
  return stats.peak_bytes


def train_step_memory(config, model, method, variables) -> int:
  """Peak bytes of the training step at `config.train.batch_size` on one device (compiled, never run)."""
  from vit_adapt.train import optim
  from vit_adapt.train import step as train_state
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  trainable, frozen = optim.split_trainable(params, method, config.optim)
  tx, sched = optim.make_optimizer(config.optim, trainable, total_steps=100, warmup_steps=10)
  state = jax.eval_shape(lambda t, m: train_state.create(t, m, tx, config.seed), trainable, model_state)
  step = train_state.make_train_step(model, method, config, tx, sched)
  b, s = config.train.batch_size, config.model.image_size
  batch = {"image": _images(b, s), "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), frozen)
  compiled = jax.jit(step, donate_argnums=0).lower(state, frozen, batch).compile()
  return memory_of(compiled)


def report(config, model, method, variables, *, eval_stats: dict | None = None,
           train_memory_bytes: int | None = None, measure_throughput: bool = True) -> dict:
  """The efficiency numbers of one model. `variables` are real arrays (throughput needs them)."""
  from vit_adapt.train import optim
  size = config.model.image_size
  trainable, _ = optim.split_trainable(variables["params"], method, config.optim)
  compiled_gmacs = gmacs_per_image(model, variables, size)
  out = {"gmacs_per_image": compiled_gmacs, "gmacs_source": "compiled"}
  if eval_stats and "gmacs" in eval_stats:
    # Input-dependent compute: the average the method measured over the evaluated images (as the papers do).
    out.update(gmacs_per_image=float(eval_stats["gmacs"]), gmacs_source="eval_average",
               gmacs_compiled_program=compiled_gmacs)
  out.update(trainable_params=vit.count_params(trainable), total_params=vit.count_params(variables["params"]))
  if measure_throughput:
    t = inference_throughput(model, variables, size, batch_size=config.efficiency.batch_size,
                             repeats=config.efficiency.repeats)
    out.update(throughput_images_per_s=t["images_per_s"], throughput_median_batch_s=t["median_s"])
  out.update(batch_size=config.efficiency.batch_size, dtype=config.model.dtype,
             device=efficiency_lib.device_description(), image_size=size)
  if train_memory_bytes is None:
    train_memory_bytes = train_step_memory(config, model, method, variables)
  out.update(peak_train_memory_bytes=int(train_memory_bytes), train_batch_size=config.train.batch_size)
  return out
