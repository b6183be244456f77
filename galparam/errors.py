"""Domain exceptions.

Every error a user can cause (a bad spec, a bad argument, a corrupt dataset) is a
:class:`GalparamError`; the console scripts print its message on one line and exit with
status 2. Anything else is a bug and keeps its traceback.

The library speaks to Python users: where an error names a function argument or suggests one
(``overwrite=True``), it says so through ``argument`` and ``remedy``, and the console layer shows
the matching flag (``--overwrite``) instead. A notebook user never reads about flags they do not
have, and a console user never reads about keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Remedy:
    """What to pass to get past an error: ``action`` (e.g. "replace it") by the switch ``argument=True``."""

    argument: str
    action: str

    def text(self, flags: dict | None = None) -> str:
        """ "to ACTION, pass overwrite=True", or with ``flags`` (argument → flag) "pass --overwrite"."""
        flag = (flags or {}).get(self.argument)
        return f"to {self.action}, pass {flag or f'{self.argument}=True'}"


class GalparamError(Exception):
    """Base class of errors caused by input: the message names the problem and what is accepted.

    Parameters
    ----------
    message : str
        The problem, on one line.
    argument : str, optional
        The function argument at fault, when ``message`` starts with its name (``n_images 1000: ...``).
    remedy : Remedy, optional
        An argument that gets past the error, appended to the message.
    """

    def __init__(self, message: str, *, argument: str | None = None, remedy: Remedy | None = None):
        super().__init__(message)
        self.message = message
        self.argument = argument
        self.remedy = remedy

    def render(self, flags: dict | None = None) -> str:
        """The message; with ``flags`` (argument name → console flag) in the console's words."""
        message = self.message
        if flags and self.argument in flags and message.startswith(self.argument):
            message = flags[self.argument] + message[len(self.argument) :]
        if self.remedy is not None:
            message = f"{message}; {self.remedy.text(flags)}"
        return message

    def __str__(self) -> str:
        return self.render()


class SpecError(GalparamError):
    """A dataset or experiment spec is malformed: unknown key, wrong type, value out of range."""


class DatasetError(GalparamError):
    """A dataset file is missing, corrupt, or does not hold what galparam needs."""


class SimulationError(GalparamError):
    """A simulation cannot proceed (unreachable SNR window, mismatched parts, existing output)."""


class TrainingError(GalparamError):
    """Training could not go on (diverged to NaN, a run folder in the way)."""
