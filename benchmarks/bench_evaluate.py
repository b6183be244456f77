"""The likelihood-fit baseline and the per-image bounds: speed and accuracy.

    python benchmarks/bench_evaluate.py                 # 500 images of each test set
    python benchmarks/bench_evaluate.py --images 100    # quicker

For SNR 60 and SNR 30: simulate the test set and fit its first ``--images`` images with 2 workers
on the k-space model (batched fits, exact gradients; seconds per image amortized over the batch and
the workers) and, in the same run, ``--galsim-images`` of them with the GalSim-path fit (one at a
time, 2 workers) and ``--naive-images`` with the naive fit (GalSim building a new profile at every
evaluation, one worker). Bias, spread and RMSE of the k-space fits against the Cramér–Rao bound,
and how well each fit's own uncertainty (``*_err``) matches the bound. Then per-image bounds of
``--bound-images`` v3 galaxies (every one different) with the k-space Jacobian, beside GalSim's
finite differences on ``--galsim-images`` of them.
Targets (issue 13): ≤ 0.05 s an image (≥ 10× the GalSim path), |bias| ≤ 0.3 bound, every fit
converged; bounds at ≥ 200 images/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np
import pandas as pd

from galparam.baseline import run_baseline
from galparam.data import load_dataset
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.galsim_fit import GalSimFit
from galparam.evaluate.metrics import estimator_metrics
from galparam.parameters import LABEL_NAMES
from galparam.simulate import simulate
from galparam.specs import load_spec

ROOT = Path(__file__).resolve().parents[1]


class NaiveFit(GalSimFit):
    """The same fit (start, likelihood, gradient scheme, L-BFGS-B, box) without the Sérsic grid: every
    evaluation renders at the exact index, so GalSim builds a new profile each time."""

    def _exact(self, theta, psf_fwhm):
        flux, n, hlr, g1, g2 = theta
        galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2)
        psf = galsim.Moffat(beta=2.0, fwhm=psf_fwhm)
        return galsim.Convolve(galaxy, psf).drawImage(nx=64, ny=64, scale=0.23, dtype=np.float64).array

    def model_and_jacobian(self, theta, psf_fwhm):
        mu = self._exact(theta, psf_fwhm)
        jac = np.empty((5, *mu.shape))
        jac[0] = mu / theta[0]
        for i, h in ((1, 1e-3), (2, 1e-4), (3, 1e-4), (4, 1e-4)):
            step = np.array(theta, dtype=np.float64)
            step[i] += h if i != 1 or theta[1] + h <= self.box.sersic_n.high else -h
            jac[i] = (self._exact(step, psf_fwhm) - mu) / (step[i] - theta[i])
        return mu, jac


def naive_fit_seconds(image, psf_fwhm, sigma) -> float:
    """Seconds for :class:`NaiveFit` on one image."""
    return NaiveFit().fit(image, psf_fwhm, sigma).seconds_


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--galsim-images", type=int, default=40)
    p.add_argument("--naive-images", type=int, default=3)
    p.add_argument("--bound-images", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)

    speed, accuracy = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for snr, sigma in ((60, 200.0), (30, 400.0)):
            spec = load_spec(ROOT / "data" / f"test_snr{snr}.yaml").with_overrides(size=args.images)
            data = simulate(spec, Path(tmp) / f"t{snr}.npz", jobs=args.jobs, progress=False).output
            t0 = time.perf_counter()
            fits = run_baseline(data, Path(tmp) / f"fits{snr}.csv", jobs=args.jobs, progress=True)
            wall = (time.perf_counter() - t0) / len(fits)
            reference = run_baseline(
                data,
                Path(tmp) / f"galsim{snr}.csv",
                n_images=args.galsim_images,
                jobs=args.jobs,
                renderer="galsim",
                progress=True,
            )
            ds = load_dataset(data)
            truth = ds.label[0].astype(np.float64)
            bound = cramer_rao(truth, 0.5, sigma).std.to_numpy()
            table = estimator_metrics(ds.label, fits[list(LABEL_NAMES)].to_numpy(), bound)
            table["median err/crb"] = fits[[f"{n}_err" for n in LABEL_NAMES]].median().to_numpy() / bound
            table.insert(0, "SNR", snr)
            accuracy.append(table)
            naive = [naive_fit_seconds(ds.img[i].astype(np.float64), 0.5, sigma) for i in range(args.naive_images)]
            ours = fits["seconds"].median()
            galsim_median = reference["seconds"].median()  # both: a worker's seconds per image
            naive_median = float(np.median(naive)) if naive else float("nan")
            speed.append(
                {
                    "SNR": snr,
                    "images": len(fits),
                    "converged": f"{fits['converged'].mean():.1%}",
                    "s/image k-space (worker median; wall, all workers)": f"{ours:.4f}; {wall:.4f}",
                    "iterations (median)": int(fits["iterations"].median()),
                    f"s/image GalSim path ({len(reference)} images)": round(galsim_median, 3),
                    "vs GalSim path": f"{galsim_median / ours:.0f}x",
                    f"s/image naive ({args.naive_images})": round(naive_median, 2),
                    "vs naive": f"{naive_median / ours:.0f}x",
                }
            )
    print(
        f"\nBaseline fit speed, {args.jobs} workers: a worker's seconds an image (k-space: its batch's time shared), "
        "and the wall time over all images (target <= 0.05 s, >= 10x the GalSim path)"
    )
    print(pd.DataFrame(speed).to_string(index=False))
    print("\nk-space fit accuracy against the Cramér-Rao bound (targets: |bias/crb| <= 0.3; every fit converged)")
    out = pd.concat(accuracy).reset_index()
    print(out.drop(columns=["explained_variance"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    bound_speed(args)


def bound_speed(args) -> None:
    """Per-image bounds of v3 galaxies (each different): k-space Jacobian against GalSim's differences."""
    from galparam.evaluate.crb import dataset_bounds

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(ROOT / "data" / "v3.yaml").with_overrides(size=args.bound_images)
        ds = load_dataset(simulate(spec, Path(tmp) / "v3.npz", jobs=args.jobs, progress=False).output)
        dataset_bounds(ds, np.arange(64), progress=False)  # tables and grids warmed
        t0 = time.perf_counter()
        exact = dataset_bounds(ds, progress=False)
        fast = len(ds) / (time.perf_counter() - t0)
        few = np.arange(args.galsim_images)
        t0 = time.perf_counter()
        reference = dataset_bounds(ds, few, progress=False, renderer="galsim")
        slow = len(few) / (time.perf_counter() - t0)
    ratio = (exact.loc[few] / reference).to_numpy()
    print("\nPer-image Cramér-Rao bounds, v3 galaxies, one process (target >= 200 images/s)")
    print(
        pd.DataFrame(
            [
                {"method": "k-space exact Jacobian", "images": len(ds), "images/s": round(fast, 1)},
                {"method": "GalSim central differences", "images": len(few), "images/s": round(slow, 1)},
            ]
        ).to_string(index=False)
    )
    print(
        "k-space / GalSim bound, max |ratio - 1| per label: "
        + ", ".join(f"{n} {v:.2%}" for n, v in zip(LABEL_NAMES, np.abs(ratio - 1).max(axis=0), strict=True))
    )


if __name__ == "__main__":
    main()
