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
