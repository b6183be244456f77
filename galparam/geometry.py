"""How an image is taken: the stamp, its pixel scale and the PSF's profile, as one frozen value.

A :class:`Geometry` is what a dataset spec declares (``stamp_size``, ``pixel_scale``,
``psf_beta``), what the k-space tables are built for, what :func:`galparam.render.renderer_for`
draws on, what a run records in its ``run.json`` and what the out-of-distribution check redraws
with. Code passes it whole; nothing else defaults these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from galparam.interval import Interval
from galparam.settings import Setting, check_setting

GEOMETRY_SETTINGS = {
    "stamp_size": Setting(int, 64, "image side in pixels", range=Interval.closed(8, 1024)),
    "pixel_scale": Setting(float, 0.23, "arcsec per pixel", range=Interval(0.0, 10.0, False, True)),
    "psf_beta": Setting(float, 2.0, "Moffat beta of the PSF", range=Interval.closed(1.1, 10.0)),
}
"""The geometry's keys, as a dataset spec gives them (the reference's values are the defaults)."""


@dataclass(frozen=True)
class Geometry:
    """A stamp of ``stamp_size`` × ``stamp_size`` pixels of ``pixel_scale`` arcsec, seen through a
    Moffat PSF of index ``psf_beta``.

    Raises
    ------
    SpecError
        A value outside :data:`GEOMETRY_SETTINGS`' ranges.
    """

    stamp_size: int = GEOMETRY_SETTINGS["stamp_size"].default
    pixel_scale: float = GEOMETRY_SETTINGS["pixel_scale"].default
    psf_beta: float = GEOMETRY_SETTINGS["psf_beta"].default

    def __post_init__(self):
        for key, setting in GEOMETRY_SETTINGS.items():
            object.__setattr__(self, key, check_setting("geometry", key, getattr(self, key), setting))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of an image."""
        return (self.stamp_size, self.stamp_size)

    def to_dict(self) -> dict:
        """The geometry's keys and values, as a spec and ``run.json`` write them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, mapping: dict) -> Geometry:
        """The geometry in ``mapping`` (a ``run.json``'s ``geometry``; other keys are left out)."""
        return cls(**{key: mapping[key] for key in GEOMETRY_SETTINGS if key in mapping})


DEFAULT_GEOMETRY = Geometry()
"""The reference's geometry: 64 × 64 pixels of 0.23″, Moffat β = 2."""
