"""The likelihood-fit baseline: speed and accuracy on the fixed-parameter test sets.

    python benchmarks/bench_evaluate.py                 # 500 images of each test set
    python benchmarks/bench_evaluate.py --images 100    # quicker

For SNR 60 and SNR 30: simulate the test set, fit its first ``--images`` images with 2 workers
(each fit runs in one process; seconds are per fit; with ``--jobs 1`` the fits run alone), and compare the bias, spread and RMSE with the
Cramér–Rao bound. In the same run, the naive form of the same fit — rendering at the exact,
continuous Sérsic index, so that GalSim builds a new profile at every evaluation — on
``--naive-images`` images gives the speed ratio.
Targets (issue 5): median ≤ 0.5 s an image; at SNR 60 std within 15 % of the bound and
|bias| ≤ 0.3 × bound for every parameter; the same at SNR 30 but for the Sérsic index.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import galsim
import numpy as np
import pandas as pd

from galparam.data import load_dataset
from galparam.evaluate.baseline import run_baseline
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.metrics import estimator_metrics
from galparam.evaluate.mle import LikelihoodFit
from galparam.parameters import LABEL_NAMES
from galparam.simulate import simulate
from galparam.specs import load_spec

ROOT = Path(__file__).resolve().parents[1]


class NaiveFit(LikelihoodFit):
    """The same fit (start, likelihood, gradient scheme, L-BFGS-B, box) without the Sérsic grid: every
    evaluation renders at the exact index, so GalSim builds a new profile each time."""

    def _exact(self, theta):
        flux, n, hlr, g1, g2 = theta
        galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2)
        psf = galsim.Moffat(beta=2.0, fwhm=self.psf_fwhm)
        return galsim.Convolve(galaxy, psf).drawImage(nx=64, ny=64, scale=0.23, dtype=np.float64).array

    def model_and_jacobian(self, theta):
        mu = self._exact(theta)
        jac = np.empty((5, *mu.shape))
        jac[0] = mu / theta[0]
        for i, h in ((1, 1e-3), (2, 1e-4), (3, 1e-4), (4, 1e-4)):
            step = np.array(theta, dtype=np.float64)
            step[i] += h if i != 1 or theta[1] + h <= self.box.sersic_n[1] else -h
            jac[i] = (self._exact(step) - mu) / (step[i] - theta[i])
        return mu, jac


def naive_fit_seconds(image, psf_fwhm, sigma) -> float:
    """Seconds for :class:`NaiveFit` on one image."""
    return NaiveFit(psf_fwhm=psf_fwhm, sigma=sigma).fit(image).result_.seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--naive-images", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)

    speed, accuracy = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for snr, sigma in ((60, 200.0), (30, 400.0)):
            spec = load_spec(ROOT / "data" / f"test_snr{snr}.yaml").with_overrides(size=args.images)
            data = simulate(spec, Path(tmp) / f"t{snr}.npz", jobs=args.jobs, progress=False).output
            fits = run_baseline(data, Path(tmp) / f"fits{snr}.csv", jobs=args.jobs, progress=True)
            ds = load_dataset(data)
            truth = ds.label[0].astype(np.float64)
            bound = cramer_rao(truth, 0.5, sigma).std.to_numpy()
            table = estimator_metrics(ds.label, fits[list(LABEL_NAMES)].to_numpy(), bound)
            table.insert(0, "SNR", snr)
            accuracy.append(table)
            naive = [naive_fit_seconds(ds.img[i].astype(np.float64), 0.5, sigma) for i in range(args.naive_images)]
            ours = fits["seconds"].median()
            naive_median = float(np.median(naive)) if naive else float("nan")
            speed.append(
                {
                    "SNR": snr,
                    "images": len(fits),
                    "jobs": args.jobs,
                    "converged": f"{fits['converged'].mean():.1%}",
                    "median s/image (galparam)": round(ours, 3),
                    f"median s/image (naive, {args.naive_images} images)": round(naive_median, 2),
                    "speed-up": f"{naive_median / ours:.0f}x",
                    "reference report": "~35 s",
                }
            )
    print("\nBaseline fit speed (target: median <= 0.5 s an image on one core)")
    print(pd.DataFrame(speed).to_string(index=False))
    print("\nBaseline accuracy against the Cramér-Rao bound (targets: std/crb within 0.85..1.15, |bias/crb| <= 0.3)")
    out = pd.concat(accuracy).reset_index()
    print(out.drop(columns=["explained_variance"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
