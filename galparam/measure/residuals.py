"""What users look at first: per galaxy, a FITS file (data, model, residual, weight) and a PNG
panel (data | model | residual on one stretch, and the residual in units of σ)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from galparam.io import atomic_path


def safe_name(name: str) -> str:
    """A galaxy's name as a file name (letters, digits, ``.+-_``; others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", str(name)).strip("_") or "galaxy"


def write_residuals(folder, stamp, model, row: dict, header=None) -> tuple[Path, Path]:
    """``<name>.fits`` (primary: data; MODEL, RESIDUAL, WEIGHT = 1/σ² with 0 where masked; the
    input's WCS and the fit's values in the headers) and ``<name>.png``; written atomically."""
    from astropy.io import fits

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = safe_name(stamp.name)
    data = np.where(stamp.mask, stamp.image, np.nan)
    weight = np.where(stamp.mask, 1.0 / stamp.sigma**2, 0.0)
    primary = fits.PrimaryHDU(data)
    if header is not None:
        from astropy.wcs import WCS

        try:
            primary.header.update(WCS(header, naxis=2).to_header())
        except Exception:  # noqa: BLE001 - a header without a WCS: none copied
            pass
    for key, value in (
        ("GP_FLUX", row["flux"]),
        ("GP_N", row["sersic_n"]),
        ("GP_HLR", row["hlr_arcsec"]),
        ("GP_G1", row["g1"]),
        ("GP_G2", row["g2"]),
        ("GP_X", row["x"]),
        ("GP_Y", row["y"]),
        ("GP_SKY", row["sky"]),
        ("GP_CHI2R", row["chi2_reduced"]),
    ):
        if np.isfinite(value):
            primary.header[key] = float(value)
    hdus = fits.HDUList(
        [
            primary,
            fits.ImageHDU(model, name="MODEL"),
            fits.ImageHDU(np.where(stamp.mask, stamp.image - model, np.nan), name="RESIDUAL"),
            fits.ImageHDU(weight, name="WEIGHT"),
        ]
    )
    fits_path, png_path = folder / f"{base}.fits", folder / f"{base}.png"
    with atomic_path(fits_path, suffix=".fits") as tmp:
        hdus.writeto(tmp, overwrite=True)
    with atomic_path(png_path, suffix=".png") as tmp:
        residual_panel(stamp, model, row, tmp)
    return fits_path, png_path


def residual_panel(stamp, model, row: dict, path) -> None:
    """Data | model | residual on one asinh stretch (masked pixels grey), and the residual / σ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import AsinhNorm, Normalize

    data = np.where(stamp.mask, stamp.image, np.nan)
    residual = np.where(stamp.mask, stamp.image - model, np.nan)
    peak = float(np.nanmax(model)) if np.isfinite(model).any() else 1.0
    noise = float(np.median(stamp.sigma[stamp.mask]))
    norm = AsinhNorm(linear_width=max(noise, 1e-3 * peak), vmin=-3 * noise, vmax=peak)
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    for ax, image, title in zip(axes[:3], (data, model, residual), ("data", "model", "residual"), strict=True):
        shown = ax.imshow(image, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(title)
    fig.colorbar(shown, ax=axes[:3], shrink=0.85, label="image units (one asinh stretch)")
    pull = axes[3].imshow(
        residual / stamp.sigma, origin="lower", cmap=diverging, norm=Normalize(-5, 5), interpolation="nearest"
    )
    axes[3].set_title("residual / σ")
    fig.colorbar(pull, ax=axes[3], shrink=0.85)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{stamp.name}: n {row['sersic_n']:.2f} ± {row['sersic_n_err']:.2f}, hlr {row['hlr_arcsec']:.3g}″, "
        f"q {row['axis_ratio']:.2f}, PA {row['position_angle']:.0f}°, χ²/dof {row['chi2_reduced']:.2f}"
        + (f"  [{row['flags']}]" if row["flags"] else ""),
        fontsize=10,
    )
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
