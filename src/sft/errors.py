"""The one exception type for mistakes in what the user gave us (recipe, data, weights, run directory), and the one
for a run the user stopped."""


class UserError(Exception):
    """A problem with the user's input. The CLI prints the message and exits with code 2, without a traceback."""

    exit_code = 2


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the CLI prints how to resume and exits with 128 + the signal's number (130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
