"""The likelihood-fit baseline: speed and accuracy on the fixed-parameter test sets.

    python benchmarks/bench_evaluate.py                 # 500 images of each test set
    python benchmarks/bench_evaluate.py --images 100    # quicker

For SNR 60 and SNR 30: simulate the test set, fit its first ``--images`` images with 2 workers
(each fit runs in one process; seconds are per fit; with ``--jobs 1`` the fits run alone), and compare the bias, spread and RMSE with the
Cramér–Rao bound. In the same run, the naive form of the fit — a new GalSim profile at every
evaluation (continuous Sérsic index) and finite-difference gradients by SciPy, as the reference
did it, but with the correct likelihood — on ``--naive-images`` images gives the speed ratio.
Targets (issue 5): median ≤ 0.5 s an image; at SNR 60 std within 15 % of the bound and
|bias| ≤ 0.3 × bound for every parameter; the same at SNR 30 but for the Sérsic index.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import galsim
import numpy as np
import pandas as pd
from scipy.optimize import minimize

from galparam.data import load_dataset
from galparam.evaluate.baseline import run_baseline
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.metrics import estimator_metrics
from galparam.evaluate.mle import DEFAULT_BOUNDS, initial_guess, negative_log_likelihood
from galparam.render import LABEL_NAMES
from galparam.simulate import simulate
from galparam.specs import load_spec

ROOT = Path(__file__).resolve().parents[1]


def naive_fit_seconds(image, psf_fwhm, sigma) -> float:
    """Seconds for the naive fit: new profile per evaluation, SciPy's 2-point gradient."""
    psf = galsim.Moffat(beta=2.0, fwhm=psf_fwhm)
    lo, hi = DEFAULT_BOUNDS[:, 0], DEFAULT_BOUNDS[:, 1]

    def nll(x):
        flux, n, hlr, g1, g2 = lo + x * (hi - lo)
        galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2)
        model = galsim.Convolve(galaxy, psf).drawImage(nx=64, ny=64, scale=0.23, dtype=np.float64).array
        return negative_log_likelihood(image, model, sigma)

    start = initial_guess(image, psf.drawImage(nx=64, ny=64, scale=0.23).array, pixel_scale=0.23)
    t0 = time.perf_counter()
    # Steps of 1e-5 of each range: SciPy's default (1e-8) drowns in GalSim's rendering noise.
    minimize(nll, (start - lo) / (hi - lo), method="L-BFGS-B", bounds=[(0, 1)] * 5, options={"eps": 1e-5})
    return time.perf_counter() - t0


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
