"""One exception type for mistakes a user can fix (bad path, bad config key, wrong checkpoint).

The CLIs catch it, print its message and exit non-zero without a traceback (`vit_adapt.cli`). Messages say what is
wrong, which file or key, and what to do.
"""

from __future__ import annotations


class UserError(Exception):
  """A problem with the user's input, config, files or environment; the message says how to fix it."""
