"""How many worker processes: one default for every parallel step (simulation, fits, the study)."""

from __future__ import annotations

import os

from galparam.errors import GalparamError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None) -> int:
    """``jobs`` worker processes, or :func:`available_cores` for None.

    Raises
    ------
    GalparamError
        If ``jobs`` is below 1.
    """
    if jobs is None:
        return available_cores()
    if int(jobs) < 1:
        raise GalparamError(f"jobs {jobs}: must be at least 1", argument="jobs")
    return int(jobs)
