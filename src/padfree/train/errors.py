"""The one error type `padfree train` raises for problems the user can fix (data, model, flags).

The CLI prints its message as one clean line (no traceback) and exits non-zero; every message names
the problem and the fix. Anything else that escapes is a padfree bug and keeps its traceback.
"""


class TrainError(ValueError):
    """A bad input to `padfree train`: raised before any training step, with nothing left on disk."""
