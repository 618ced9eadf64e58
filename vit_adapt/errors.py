"""One exception type for mistakes a user can fix (bad path, bad config key, wrong checkpoint).

The CLIs catch it, print its message and exit non-zero without a traceback (`cli_main`). Messages say what is
wrong, which file or key, and what to do.
"""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
  """A problem with the user's input, config, files or environment; the message says how to fix it."""


def cli_main(main):
  """Wraps an absl `main(argv)` so a UserError prints `error: ...` and exits with status 2."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped


def parse_flags(argv):
  """`app.run(main, flags_parser=parse_flags)`: a bad --config exits 2 with a message instead of a traceback.

  Unknown or malformed flags, and `ml_collections.config_flags` errors (raised while parsing: a UserError from
  `get_config(arg)`, an unknown `--config.x=y` field; or deferred until first use: a config file that failed to
  load) all become `error: ...` and exit status 2.
  """
  from absl import flags
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
