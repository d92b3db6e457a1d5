"""Error types shared by every layer.

`InputError` is the one exception type the CLI turns into a one-line message and exit code 2.
Its message must name the problem *and* the fix, e.g.
``"frames/positions mismatch in /entry_3: 120 frames but 118 translations; fix the file's translation dataset"``.
"""


class InputError(ValueError):
    """Bad user input (file, option, configuration). The CLI prints ``error: <message>`` and exits 2."""


class BackendUnavailable(RuntimeError):
    """The requested array backend (e.g. CuPy on a GPU) cannot be used on this machine."""


class DivergedError(InputError):
    """A reconstruction turned NaN or infinite: raised by the history check at the first such row, on every
    rank together (rows come from reduced quantities). Printed as one ``error:`` line with exit code 2;
    nothing is written. ``iteration`` and ``quantity`` name where and what."""

    def __init__(self, message: str, iteration: int = 0, quantity: str = ""):
        super().__init__(message)
        self.iteration = int(iteration)
        self.quantity = str(quantity)


_PLAIN = (("Input should be greater than or equal to ", "must be >= "), ("Input should be greater than ", "must be > "),
          ("Input should be less than or equal to ", "must be <= "), ("Input should be less than ", "must be < "),
          ("Input should be a valid integer", "must be a whole number"),
          ("Input should be a valid number", "must be a number"), ("Input should be ", "must be "),
          ("Value error, ", ""))


def plain_message(msg: str) -> str:
    """A pydantic validation message in the words of hpc-pt's errors ("must be >= 1", not "Input should be
    greater than or equal to 1")."""
    text = str(msg)
    for old, new in _PLAIN:
        text = text.replace(old, new)
    return text
