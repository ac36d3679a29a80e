"""User-facing errors.

Anything raised as `UserError` is a mistake the user can fix: the CLI prints its message on
one line (prefixed `gptbench: error:`) and exits with status 2, never with a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""

    exit_code = 2
