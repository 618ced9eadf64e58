"""Every method's inference program (and a training step) at a given variant / image size / batch / dtype.

The one place the benchmarks in experiments/ build what they time (bench_vs_pytorch.py, accelerator_suite.py,
bench_dyt.py, bench_met.py), so that "DyT at 50 % activation" or "MET at budget 0.6" means the same program
everywhere:

  prog = programs.build("dyt threshold", variant="B/16", image_size=224, batch=8, dtype="float32", rate=0.5)
  run = prog.compile()             # zero-argument callable: one batch through the compiled program
  prog.gmacs                       # multiply-adds per image (the method's own per-image count where its
                                   # compute depends on the input, else the lowered program's dot/conv count)

Random weights (speed does not depend on their values) with the two exceptions that change the work done:
DyT's routers get per-layer biases calibrated on the benchmark batch so that `rate` of the patch tokens are
active in every layer (what a trained router with that target does on average), and MET's exit thresholds are
calibrated on the benchmark batch so that its average cost is `budget` x the full network's. Trainable
parameters get small random values (zero-initialised adapter up-projections would make adapters no-ops).
The model's compute dtype is passed explicitly ('float32' / 'bfloat16'); parameters stay float32.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vit_adapt import config_lib, methods, tasks  # noqa: E402
from vit_adapt.cli import compile_cache  # noqa: E402
from vit_adapt.efficiency import measure  # noqa: E402
from vit_adapt.methods import base  # noqa: E402
from vit_adapt.methods.met import calibrate as met_calibrate  # noqa: E402
from vit_adapt.methods.met import exit as met_exit  # noqa: E402

NUM_CLASSES = 100

# A device session runs several of these scripts one after another (backend_checks, accelerator_suite,
# bench_vs_pytorch), each compiling the same ViT-B/16 programs: with VIT_ADAPT_COMPILATION_CACHE=DIR set they share
# them through JAX's persistent cache. Unset, nothing is cached (a benchmark's build time stays a cold compile).
if os.environ.get(compile_cache.ENV):
  compile_cache.enable()
# Per-example statistics a method's inference pass returns beside the logits (kept out of dead-code elimination
# only where the method computes them anyway).
STATS = ("gmacs", "activation_rate")


@dataclasses.dataclass
class Program:
  """One method's inference program on one fixed batch."""
  name: str
  config: Any            # the experiment config (config.model / config.method as built)
  model: Any
  variables: dict
  images: jax.Array      # (batch, S, S, 3) float32 in [-1, 1]
  info: str = ""         # what was calibrated (activation rate, budget)
  gmacs: float = float("nan")  # set by `compile`

  @property
  def batch(self) -> int:
    return int(self.images.shape[0])

  def fn(self) -> Callable:
    """(variables, images) -> (logits, per-example stats the method reports)."""
    model = self.model

    def apply(variables, images):
      logits, out = model.apply(variables, images, train=False)
      return logits, {k: out[k] for k in STATS if k in out}
    return apply

  def compile(self) -> Callable[[], Any]:
    """Ahead-of-time compiled program on this batch: a zero-argument callable (one timed call). Runs it once
    and sets `gmacs`."""
    compiled = jax.jit(self.fn()).lower(self.variables, self.images).compile()
    run = lambda: compiled(self.variables, self.images)
    self.gmacs = _gmacs(self, jax.block_until_ready(run())[1])
    return run


def experiment_config(method: str, *, variant: str, image_size: int, dtype: str, **fields):
  c, _ = config_lib.make_config(method, "task=vtab/cifar100")
  c.model.update(variant=variant, image_size=image_size, dtype=dtype, init="", head_init_std=0.01)
  c.dataset.num_classes = NUM_CLASSES
  c.method.update(fields)
  return c


def perturb_trainable(params, method, scale: float = 0.02, seed: int = 2):
  """Small random values on the trainable parameters (as after training: adapters are not no-ops)."""
  trainable, frozen = methods.split_params(params, method.trainable)
  flat = base.flatten(trainable)
  key = jax.random.PRNGKey(seed)
  for name in sorted(flat):
    key, sub = jax.random.split(key)
    flat[name] = flat[name] + scale * jax.random.normal(sub, flat[name].shape, flat[name].dtype)
  return methods.merge_params(base.unflatten(flat), frozen)


# ------------------------------------------------------------------------------------------------------------
# Calibration of the methods whose work depends on the weights.

def calibrate_router_bias(model, params, x, rate, iters=4):
  """Per-layer DyT router biases so that `rate` of the patch tokens of `x` are active in every layer.

  `model` must return the router logits (`dyt_logits`, (B, depth, N-1)), i.e. DyT's 'masked' inference."""
  fwd = jax.jit(model.apply)
  flat = base.flatten(params)
  for _ in range(iters):
    _, out = fwd({"params": base.unflatten(flat)}, x)
    logits = np.asarray(out["dyt_logits"], np.float32)
    for i in range(logits.shape[1]):
      key = f"Transformer/encoderblock_{i}/router/bias"
      flat[key] = flat[key] - np.quantile(logits[:, i], 1.0 - rate)
  return base.unflatten(flat)


def met_random_exits(params, seed: int = 0):
  """Random exit heads and E-adapter up-projections, so that exit confidences differ from image to image."""
  flat = base.flatten(params)
  key = jax.random.PRNGKey(seed + 1)
  for name in sorted(flat):
    if name.endswith(("head/kernel", "up/kernel")):
      key, sub = jax.random.split(key)
      flat[name] = jax.random.normal(sub, flat[name].shape) * (0.05 if "up" in name else 0.3)
  return base.unflatten(flat)


def met_thresholds(model, variables, images, budget: float):
  """Exit thresholds whose average cost on `images` ((n, B, S, S, 3) or (B, S, S, 3)) is `budget` x the full
  network's -> (thresholds, exit index per image, average GMACs)."""
  costs = model.exit_gmacs
  dense = model.clone(thresholds=(), inference="last")
  probe = jax.jit(lambda v, x: met_exit.confidence(dense.apply(v, x)[1]["exit_logits"], model.confidence))
  batches = images if images.ndim == 5 else images[None]
  conf = np.concatenate([np.asarray(probe(variables, x), np.float64) for x in batches], axis=1)
  thresholds, _ = met_calibrate.thresholds_for_budget(conf, costs, budget * costs[-1])
  exit_idx = met_calibrate.exits_taken(conf, thresholds)
  return thresholds, exit_idx, met_calibrate.average_cost(exit_idx, costs)


def _prepare_dyt(prog: Program, rate: float, **_) -> Program:
  masked, _ = methods.build_model(base.with_method_fields(prog.config, inference="masked"))
  params = calibrate_router_bias(masked, prog.variables["params"], prog.images, rate)
  prog.variables = {**prog.variables, "params": params}
  prog.info = f"routers calibrated to {rate:.2f} active"
  return prog


def _prepare_met(prog: Program, budget: float, **_) -> Program:
  variables = {**prog.variables, "params": met_random_exits(prog.variables["params"])}
  thresholds, _, avg = met_thresholds(prog.model, variables, prog.images, budget)
  prog.model = prog.model.clone(thresholds=thresholds, inference=prog.config.method.inference)
  prog.variables = variables
  prog.info = f"thresholds calibrated to {budget:.2f} x full GMACs"
  return prog


@dataclasses.dataclass(frozen=True)
class Spec:
  method: str
  fields: dict = dataclasses.field(default_factory=dict)
  prepare: Callable[..., Program] | None = None
  doc: str = ""


# Program name -> how to build it. Order = the order the benchmarks run them (most important first, so a run
# cut short by its time budget still has the comparisons that matter).
SPECS: dict[str, Spec] = {
    "dense": Spec("linear", doc="the plain ViT"),
    "dyt threshold": Spec("dyt", dict(inference="threshold"), _prepare_dyt,
                          "DyT token dispatch, `threshold` inference, routers at `rate`"),
    "sparse_tuning released": Spec("sparse_tuning", dict(dense_adapter="released", keep_rate=0.7, fuse_token=True),
                                   doc="Sparse-Tuning, the released adapter, keep rate 0.7 at blocks 3, 6, 9, "
                                       "token fusion"),
    "met early_exit": Spec("met", dict(inference="early_exit"), _prepare_met,
                           "MET early exits at `budget` x the full network's GMACs"),
    "synqt": Spec("synqt", doc="SynQT query synthesis"),
    "adapter": Spec("adapter", doc="AdaptFormer adapters"),
    "lora": Spec("lora", doc="LoRA on q, v"),
    "vpt": Spec("vpt", doc="deep VPT, 10 prompts"),
}
names = list(SPECS)

_GMACS_CACHE: dict[tuple, float] = {}


def build(name: str, *, variant: str = "B/16", image_size: int = 224, batch: int = 8, dtype: str = "float32",
          rate: float = 0.5, budget: float = 0.6, seed: int = 0, images: jax.Array | None = None) -> Program:
  """The program `name` (one of `names`) with random weights, calibrated on its own benchmark batch."""
  if name not in SPECS:
    raise KeyError(f"unknown program {name!r}; known: {', '.join(names)}")
  spec = SPECS[name]
  c = experiment_config(spec.method, variant=variant, image_size=image_size, dtype=dtype, **spec.fields)
  c.seed = seed
  model, method = methods.build_model(c)
  variables = dict(methods.init_variables(model, method, c, load_backbone=False))
  variables["params"] = perturb_trainable(variables["params"], method)
  if images is None:
    images = jax.random.uniform(jax.random.PRNGKey(seed + 7), (batch, image_size, image_size, 3), jnp.float32,
                                -1.0, 1.0)
  prog = Program(name, c, model, variables, images)
  if spec.prepare is not None:
    prog = spec.prepare(prog, rate=rate, budget=budget)
  return prog


def _gmacs(prog: Program, stats: dict) -> float:
  """Per-image GMACs: the method's own count when it reports one (input-dependent compute: DyT, MET; the
  average over the batch, as the papers and the efficiency report do), else the lowered program's (the same figure
  on every backend, vit_adapt.efficiency.measure)."""
  if "gmacs" in stats:
    return float(jnp.mean(stats["gmacs"]))
  key = (prog.name, prog.config.model.variant, prog.config.model.image_size)
  if key not in _GMACS_CACHE:  # the same for every dtype and batch: count once
    _GMACS_CACHE[key] = measure.lowered_gmacs(lambda v, x: prog.fn()(v, x)[0], prog.variables, prog.images[:1])
  return _GMACS_CACHE[key]


# ------------------------------------------------------------------------------------------------------------
# Training steps: the trainer's own step (train/step.py), AdamW on the method's trainable tree.

TRAIN_METHODS = {"full": "full fine-tuning", "adapter": "adapter", "dyt": "DyT (complete pass + distillation)"}


@dataclasses.dataclass
class TrainStep:
  name: str
  batch: int
  run: Callable[[], Any]   # one step (the state is donated and carried over)
  gmacs: float             # multiply-adds of the lowered step per image


def build_train_step(method: str, *, variant: str = "B/16", image_size: int = 224, batch: int = 64,
                     dtype: str = "bfloat16", seed: int = 0) -> TrainStep:
  """The trainer's compiled training step for `method` (a method name; see TRAIN_METHODS) on a batch of zeros."""
  # Imported here: vit_adapt.train brings clu (and TensorFlow with it), which inference programs do not need.
  from vit_adapt.train import optim
  from vit_adapt.train import step as step_lib
  c = experiment_config(method, variant=variant, image_size=image_size, dtype=dtype)
  c.seed, c.train.batch_size = seed, batch
  task = tasks.for_config(c)
  model, m = methods.build_model(c)
  variables = methods.init_variables(model, m, c, load_backbone=False)
  trainable, frozen = optim.split_trainable(variables["params"], m, c.optim)
  model_state = {k: v for k, v in variables.items() if k != "params"}
  tx, sched = optim.make_optimizer(c.optim, trainable, total_steps=100, warmup_steps=10)
  step = step_lib.make_train_step(model, m, c, tx, sched, task)
  data = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), task.batch_spec(c, batch))
  state = step_lib.create(trainable, model_state, tx, c.seed)
  gmacs = measure.lowered_gmacs(step, state, frozen, data, batch_size=batch)
  compiled = jax.jit(step, donate_argnums=0).lower(state, frozen, data).compile()
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], frozen, data)
    return metrics
  return TrainStep(TRAIN_METHODS.get(method, method), batch, run, gmacs)
