"""The one training loop and its parts: `train_and_evaluate(config, workdir)` (loop.py), the train state and step
(step.py), the optimizer and schedule (optim.py), the device mesh (mesh.py), evaluation (evaluate.py),
checkpoints of the training state (checkpoints.py), metric writers (writers.py) and `results.json` (results.py).
"""

from vit_adapt.train.loop import train_and_evaluate  # noqa: F401
