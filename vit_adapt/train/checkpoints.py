"""Training checkpoints (orbax `CheckpointManager` under `workdir/checkpoints`) with exact resume.

A checkpoint holds the `TrainState` (trainable parameters, optimizer state, non-parameter collections, step,
RNG) and the grain iterator state in one `Composite`, so a restarted run sees exactly the batches an
uninterrupted run would. The frozen backbone is NOT saved: it is rebuilt from `config.model.init` and the seed,
so a VTAB-1k adapter checkpoint weighs megabytes, not the 330 MB of a ViT-B.

Orbax commits a step directory atomically (a marker written last), so a run killed while saving leaves either
a complete step or an uncommitted temporary that is ignored. A committed step that still fails to restore
(disk corruption, a truncated copy) is reported, moved to `checkpoints.corrupt/` and the previous step is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from vit_adapt.train import step as train_state_lib
from vit_adapt.errors import UserError


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


class TrainCheckpoints:
  """Saves and restores (TrainState, data iterator) pairs by step."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._mngr = self._manager()

  def _manager(self):
    return ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=self._keep or None, create=True))

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, state: train_state_lib.TrainState, data_iter) -> None:
    step = int(jax.device_get(state.step))
    # A checkpoint is what a restart resumes from: one holding NaNs would resume into the same failure.
    if not bool(jax.device_get(train_state_lib.all_finite((state.params, state.opt_state, state.model_state)))):
      raise UserError(f"training diverged: the parameters are NaN/inf after step {step} (no checkpoint was "
                      "written for it). Lower config.optim.lr, set config.optim.grad_clip (e.g. 1.0), or use "
                      "config.model.dtype='float32'.")
    if step in self._mngr.all_steps():
      return
    with self._disk_errors(step):
      self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.to_dict()),
                                                    data=grain.checkpoint.CheckpointSave(data_iter)))

  @contextlib.contextmanager
  def _disk_errors(self, step):
    """A full or read-only disk while writing a checkpoint is the user's to fix: one message, not a traceback."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- orbax wraps OSErrors in its own types; look at the whole chain
      cause = e
      while cause is not None and not (isinstance(cause, OSError) and cause.errno in _DISK_ERRNOS):
        cause = cause.__cause__ or cause.__context__
      if cause is None:
        raise
      raise UserError(f"could not write the checkpoint{f' of step {step}' if step is not None else ''} in "
                      f"{self.directory}: {os.strerror(cause.errno)}. Free space (or fix the permissions) and "
                      "re-run the same command: it resumes from the last complete checkpoint.") from None

  def restore_latest(self, state: train_state_lib.TrainState, data_iter):
    """-> the newest restorable TrainState (and `data_iter` moved to its position), or None if there is none.

    `state` supplies the structure, shapes, dtypes and shardings to restore into.
    """
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state.to_dict())
    # All or nothing: grain moves `data_iter` while it restores, so a step whose state then fails to restore
    # must put the iterator back; with no restorable step the run is exactly a fresh one.
    fresh = data_iter.get_state()
    steps = sorted(self._mngr.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(data_iter)))
      except Exception as e:  # noqa: BLE001 -- any failure to read a step means: fall back to the previous one
        data_iter.set_state(fresh)
        self._quarantine(step, e, has_previous=i + 1 < len(steps))
        continue
      logging.info("Resumed from checkpoint step %d in %s", step, self.directory)
      return type(state).from_dict(restored.state)  # a TrainState, or a packed sweep's stacked PackState
    return None

  def _quarantine(self, step: int, error: Exception, *, has_previous: bool) -> None:
    target = os.path.join(os.path.dirname(self.directory), "checkpoints.corrupt", f"{step}-{int(time.time())}")
    then = ("falling back to the previous checkpoint" if has_previous
            else "no earlier checkpoint: the run starts from scratch")
    reason = str(error).splitlines()[0][:200] if str(error) else ""
    message = (f"checkpoint step {step} in {self.directory} cannot be restored ({type(error).__name__}: "
               f"{reason}); moved it to {target}; {then}.")
    logging.warning(message)
    print(f"warning: {message}", flush=True)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    multihost_utils.sync_global_devices(f"quarantine_{step}")
    self._mngr.close()
    self._mngr = self._manager()

  def wait_until_finished(self) -> None:
    with self._disk_errors(None):
      self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()
