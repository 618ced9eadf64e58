"""What every command-line entry point shares: flag parsing, the error wrapper and the log filter.

  if __name__ == "__main__":
    cli.run(main)

A `UserError` (what is wrong, which file or key, what to do) prints `error: ...` and exits with status 2 without
a traceback, whether it is raised while the flags and the `--config` file are parsed or by `main` itself.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags
from absl import logging as absl_logging

from vit_adapt.errors import UserError


def cli_main(main):
  """Wraps an absl `main(argv)`: orbax's INFO lines are dropped and a UserError exits 2 with its message."""

  @functools.wraps(main)
  def wrapped(argv):
    quiet_orbax()
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
    field = str(e).strip("\"'")
    print(f"error: --config has no field {field!r}; check the --config.x=y overrides against the config file.",
          file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # only the command line and the config file run here
    print(f"error: could not load --config: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
  return rest


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
