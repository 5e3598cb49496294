"""Errors a user can fix, which the CLIs report as one `error:` line (exit status 2)."""


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names the extra that brings it."""
