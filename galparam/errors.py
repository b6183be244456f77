"""Domain exceptions.

Every error a user can cause (a bad spec, a bad argument, a corrupt dataset) is a
:class:`GalparamError`; the console scripts print its message on one line and exit with
status 2. Anything else is a bug and keeps its traceback.
"""


class GalparamError(Exception):
    """Base class of errors caused by input: the message names the problem and what is accepted."""


class SpecError(GalparamError):
    """A dataset or experiment spec is malformed: unknown key, wrong type, value out of range."""


class DatasetError(GalparamError):
    """A dataset file is missing, corrupt, or does not hold what galparam needs."""


class SimulationError(GalparamError):
    """A simulation cannot proceed (unreachable SNR window, mismatched parts, existing output)."""
