"""The one exception type users see.

Library code raises `UserError` for anything the user can fix (a bad path, a wrong option, a file that is not
a generator). The CLI prints its message as a single line and exits non-zero; any other exception is a bug and
keeps its traceback (shown with `--debug`).
"""


class UserError(Exception):
    """A problem with the user's input. The message says what is wrong and how to fix it, in one line."""
