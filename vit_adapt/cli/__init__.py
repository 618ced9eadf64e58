"""What every command-line entry point shares: flag parsing, the error wrapper, the log filter and the backend report.

  if __name__ == "__main__":
    cli.run(main)

A `UserError` (what is wrong, which file or key, what to do) prints `error: ...` and exits with status 2 without
a traceback, whether it is raised while the flags and the `--config` file are parsed or by `main` itself.
Every CLI logs the JAX backend it computes on and warns, with the install command, when the machine has a GPU
or TPU that JAX does not use (`backend.py`).
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags
from absl import logging as absl_logging

from vit_adapt.cli import backend
from vit_adapt.errors import UserError


def cli_main(main):
  """Wraps an absl `main(argv)`: orbax's INFO lines are dropped, the backend is reported (`backend.py`) and a
  UserError exits 2 with its message."""

  @functools.wraps(main)
  def wrapped(argv):
    quiet_orbax()
    backend.report_backend()
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped


def parse_flags(argv):
  """absl's `flags_parser`: a bad flag or --config exits 2 with a message instead of a traceback.

  Unknown or malformed flags, and `ml_collections.config_flags` errors (raised while parsing: a UserError from
  `get_config(arg)`, an unknown `--config.x=y` field; or deferred until first use: a config file that failed to
  load) all become `error: ...` and exit status 2.
  """
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):
      value = flags.FLAGS[name].value
      if type(value).__name__ == "_ErrorConfig":  # config_flags' placeholder for a config that failed to load
        getattr(value, "lock")  # raises the deferred load error
  except (UserError, flags.Error) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # config_flags: an override of a field the config does not have
    print(f"error: {_no_field_message(e, argv)}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # only the command line and the config file run here
    print(f"error: could not load --config: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  return rest


def _no_field_message(e: BaseException, argv) -> str:
  """Plain text for ml_collections' unknown-field error, a KeyError inside an AttributeError whose str() is an
  escaped repr with the "Did you mean" suggestion after a newline: the field, the override, the suggestion."""
  detail = e
  while isinstance(detail, BaseException) and detail.args:
    detail = detail.args[0]
  first, _, suggestion = str(detail).partition("\n")
  field = first.strip("\"' ")
  override = next((a.split("=", 1)[0] for a in argv
                   if a.startswith("--config.") and field in a.split("=", 1)[0].split(".")), None)
  return (f"--config has no field {field!r}" + (f" ({override})" if override else "") + ". "
          + (f"{suggestion.strip()} " if suggestion.strip() else "")
          + "Check the --config.x=y overrides against the config file.")


def run(main) -> None:
  """`app.run` with the shared flag parser and error wrapper."""
  app.run(cli_main(main), flags_parser=parse_flags)


class _DropOrbaxInfo:
  def filter(self, record):
    return record.levelno > 20 or "/orbax/" not in record.pathname


_FILTER = _DropOrbaxInfo()


def quiet_orbax() -> None:
  """Drops orbax's INFO records (a dozen lines per save/restore) from the absl console log."""
  handler = absl_logging.get_absl_handler()
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
