"""The one exception type for mistakes in what the user gave us (recipe, data, weights, run directory)."""


class UserError(Exception):
    """A problem with the user's input. The CLI prints the message and exits with code 2, without a traceback."""
