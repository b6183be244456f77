"""``galparam-measure``'s fit on simulated stamps in three geometries: accuracy and speed.

    python benchmarks/bench_measure.py                # 300 stamps a geometry (~3 min on 2 cores)
    python benchmarks/bench_measure.py --images 60    # quicker

The geometries (issue 25):

* ground, Moffat: 64² pixels of 0.23″, Moffat PSF (FWHM 0.5″, β 2), galparam's test-set galaxy;
* HST: 100² pixels of 0.03″, the PSF image of an HST/ACS F814W galaxy (data/real/hst-aegis);
* SDSS: 128² pixels of 0.396″, an SDSS r-band PSF image (data/real/sdss), 20 % of the pixels
  masked at random.

Each stamp is drawn by GalSim itself (``drawImage``, the PSF as GalSim's ``Moffat`` or
``InterpolatedImage``), the galaxy's centre uniform within ±3 pixels of the stamp's, white
Gaussian noise for SNR 60 (sqrt(Σ I²)/σ over the noiseless stamp). The stamps are measured with
``galparam.measure`` on 2 workers (flux, index, radius, shear and centre fitted; the sky held).
Per parameter: bias and spread over the Cramér–Rao bound at each stamp's truth (the same model's
Fisher matrix with the mask), and the median of the fit's own error over the bound. Targets:
spread 0.8–1.25 of the bound, |bias| ≤ 0.3 bound, median error within 10 % of the bound; ≤ 0.05 s
a 64² stamp and ≤ 0.2 s a 128² stamp (2 workers).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits

from galparam.evaluate.crb import covariances, fisher_matrices
from galparam.frame import Frame
from galparam.kspace.stamps import STAMP_PARAMETERS, draw_stamps, wide_tables
from galparam.measure import measure
from galparam.psf import ImagePSF, MoffatPSF
from galparam.stamp import Stamp

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "data" / "real"
FITTED = STAMP_PARAMETERS[:7]
SNR = 60.0


def geometries() -> dict:
    """name → (frame, galaxy (flux, n, hlr arcsec, g1, g2), masked fraction, speed target s/stamp)."""
    hst_psf = fits.getdata(REAL / "hst-aegis" / "AEGIS_F814w_PSF_images_01.fits", 0).astype(float)
    sdss_psf = fits.getdata(REAL / "sdss" / "J162123.19+322056.4_psf.fits").astype(float)
    return {
        "ground 64² 0.23″, Moffat": (
            Frame((64, 64), 0.23, MoffatPSF(0.5, 2.0)),
            (1.0e5, 3.0, 0.3, -0.069, 0.15),
            0.0,
            0.05,
        ),
        "HST 100² 0.03″, PSF image": (
            Frame((100, 100), 0.03, ImagePSF(hst_psf, 0.03, source="HST PSF")),
            (1.0e5, 3.0, 0.3, -0.069, 0.15),
            0.0,
            None,
        ),
        "SDSS 128² 0.396″, PSF image, 20 % masked": (
            Frame((128, 128), 0.396, ImagePSF(sdss_psf, 0.396, source="SDSS PSF")),
            (1.0e5, 3.0, 1.5, -0.069, 0.15),
            0.2,
            0.2,
        ),
    }


def galsim_stamp(frame: Frame, theta) -> np.ndarray:
    """GalSim's drawing of the galaxy (the truth the fit never sees drawn by its own model)."""
    flux, n, hlr, g1, g2, dx, dy = theta[:7]
    s = frame.pixel_scale
    galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2).shift(dx * s, dy * s)
    method = "no_pixel" if frame.psf.includes_pixel else "auto"
    ny, nx = frame.shape
    profile = galsim.Convolve(galaxy, frame.psf.to_galsim())
    return profile.drawImage(nx=nx, ny=ny, scale=s, method=method, dtype=float).array


def simulate(frame: Frame, galaxy, masked: float, count: int, rng):
    """Stamps, their truths (STAMP_PARAMETERS) and the Cramér–Rao bounds at the truths (count, 7)."""
    tables = wide_tables()
    stamps, truths, bounds = [], [], []
    for i in range(count):
        truth = np.r_[galaxy, rng.uniform(-3, 3, 2), 0.0]
        clean = galsim_stamp(frame, truth)
        sigma = float(np.sqrt(np.sum(clean**2)) / SNR)
        keep = rng.uniform(size=frame.shape) >= masked
        image = clean + rng.normal(0, sigma, frame.shape)
        stamps.append(Stamp.from_arrays(image, frame, noise_sigma=sigma, mask=keep, name=f"stamp{i:04d}"))
        model, jac = draw_stamps(tables, frame, truth[None], derivatives="jacobian")
        fisher = fisher_matrices(model, jac[:, :7], np.full(frame.shape, sigma)[None], poisson=False, mask=keep[None])
        bounds.append(np.sqrt(np.diag(covariances(fisher)[0])))
        truths.append(truth)
    return stamps, np.array(truths), np.array(bounds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="stamps per geometry (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=25)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows, speed = [], []
    for name, (frame, galaxy, masked, target) in geometries().items():
        stamps, truths, bounds = simulate(frame, galaxy, masked, args.images, rng)
        t0 = time.perf_counter()
        table = measure(stamps, jobs=args.jobs, progress=False)
        seconds = (time.perf_counter() - t0) / len(stamps)
        columns = {
            "flux": "flux",
            "sersic_n": "sersic_n",
            "hlr": "hlr_arcsec",
            "g1": "g1",
            "g2": "g2",
            "dx": "x",
            "dy": "y",
        }
        estimate = np.column_stack([np.asarray(table[c], dtype=float) for c in columns.values()])
        errors = np.column_stack([np.asarray(table[f"{c}_err"], dtype=float) for c in columns.values()])
        ny, nx = frame.shape
        estimate[:, 5] -= (nx + 1) / 2
        estimate[:, 6] -= (ny + 1) / 2
        pulls = (estimate - truths[:, :7]) / bounds
        converged = int(np.sum(table["converged"]))
        for j, parameter in enumerate(FITTED):
            bias, spread = float(np.mean(pulls[:, j])), float(np.std(pulls[:, j]))
            claimed = float(np.median(errors[:, j] / bounds[:, j]))
            ok = 0.8 <= spread <= 1.25 and abs(bias) <= 0.3 and abs(claimed - 1) <= 0.1
            rows.append((name, parameter, bias, spread, claimed, "yes" if ok else "NO"))
        speed.append((name, len(stamps), converged, seconds, target))
    print(f"\nAccuracy at SNR {SNR:g}, centres within ±3 pixels ({args.images} stamps a geometry, drawn by GalSim)")
    print("| geometry | parameter | bias / CRB | std / CRB | median error / CRB | within targets |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, parameter, bias, spread, claimed, ok in rows:
        print(f"| {name} | {parameter} | {bias:+.2f} | {spread:.2f} | {claimed:.3f} | {ok} |")
    print("\nTargets: std/CRB 0.8–1.25, |bias| ≤ 0.3 CRB, median error within 10 % of the CRB.")
    print(f"\nSpeed ({args.jobs} workers, wall time over stamps, inputs checked, fits, table)")
    print("| geometry | stamps | converged | s / stamp | target |")
    print("| --- | --- | --- | --- | --- |")
    for name, count, converged, seconds, target in speed:
        target_text = "—" if target is None else f"≤ {target:g} ({'met' if seconds <= target else 'MISSED'})"
        print(f"| {name} | {count} | {converged} | {seconds:.3f} | {target_text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
