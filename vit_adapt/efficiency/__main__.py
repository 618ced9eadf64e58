"""The efficiency report of one model, as JSON:

  python -m vit_adapt.efficiency --config=configs/adapter_vtab.py [--checkpoint=DIR] [--output=report.json]

See `vit_adapt.efficiency.report` for what is measured and how.
"""

import json

from vit_adapt.efficiency.report import report

def _load(config, checkpoint: str | None):
  """-> (config, model, method, variables): a trained model directory, or the config's initialisation.

  With both, the model comes from the checkpoint and the measurement settings (`efficiency`, `train.batch_size`)
  from --config.
  """
  from vit_adapt import methods
  if checkpoint:
    ckpt_config, model, method, variables = methods.load_model_dir(checkpoint)  # model dir, or workdir with model/
    if config is not None:
      ckpt_config.efficiency = config.efficiency
      ckpt_config.train.batch_size = config.train.batch_size
    return ckpt_config, model, method, variables
  # Without a trained model the weights are the seeded initialisation (no backbone file needed): compute and
  # memory of the dense methods do not depend on the values.
  model, method = methods.build_model(config)
  return config, model, method, methods.init_variables(model, method, config, load_backbone=False)


def _eval_stats(config, model, method, variables) -> dict | None:
  """Per-example method statistics averaged over the eval split, for methods with input-dependent compute."""
  if method.eval_stats is None:
    return None
  from vit_adapt import tasks
  from vit_adapt.train import evaluate
  from vit_adapt.train import mesh as mesh_lib
  task = tasks.for_config(config)
  mesh = mesh_lib.make_mesh()
  variables = mesh_lib.replicate(variables, mesh_lib.replicated(mesh))
  evaluator = evaluate.Evaluator(model, method, task, mesh)
  return evaluator(variables, task.eval_batches(config, config.dataset.eval_split))["stats"]


def main(argv):
  from vit_adapt import config_lib, tasks  # after flag parsing: keeps `--help` fast
  from vit_adapt.errors import UserError
  from vit_adapt.train import optim
  from vit_adapt.train import step as train_step
  del argv
  config = FLAGS.config
  if config is None and not FLAGS.checkpoint:
    raise UserError("give --config (e.g. --config=configs/adapter_vtab.py) and/or --checkpoint=WORKDIR.")
  if config is not None:
    config_lib.validate(config)
  config, model, method, variables = _load(config, FLAGS.checkpoint)
  stats = _eval_stats(config, model, method, variables) if FLAGS.eval_gmacs else None
  task = tasks.for_config(config)
  result = {"method": config.method.name, "task": config.dataset.name,
            "weights": FLAGS.checkpoint or "seeded random initialisation (no --checkpoint)",
            **report(config, model, variables, example_input=task.example_input, per_image=task.efficiency,
                     trainable=optim.split_trainable(variables["params"], method,
                                                                                config.optim)[0],
                     train_memory_bytes=train_step.train_step_memory(config, model, method, variables),
                     eval_stats=stats)}
  if task.efficiency_fields is not None:  # e.g. video: GMACs per view and per video, clips/s
    result.update(task.efficiency_fields(config, result))
  text = json.dumps(result, indent=2, default=float)
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags

  from vit_adapt import cli
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:args]).")
  flags.DEFINE_string("checkpoint", None, "A trained model: a workdir of vit_adapt.main or its model/ directory.")
  flags.DEFINE_string("output", None, "Also write the JSON report to this file.")
  flags.DEFINE_bool("eval_gmacs", True, "For methods with input-dependent compute, average their per-image GMACs "
                    "over the eval split (needs the dataset).")
  FLAGS = flags.FLAGS
  cli.run(main)
