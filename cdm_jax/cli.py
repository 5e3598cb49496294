"""What every command-line entry point shares: a bad input ends the process with one readable
line on stderr and exit status 2, not a traceback."""

import functools
import logging
import sys

log = logging.getLogger(__name__)
USER_ERRORS = (ValueError, FileNotFoundError)


def user_errors_exit(main):
  """Wraps an absl `main(argv)`: ValueError / FileNotFoundError (bad flags, configs, paths,
  workdirs; their messages say the fix) print `error: ...` and exit 2."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as err:
      print(f"error: {err}", file=sys.stderr)
      logging.shutdown()
      sys.exit(2)
  return wrapped
