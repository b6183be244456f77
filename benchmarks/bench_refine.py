"""The likelihood fit started from a network's estimate (``galparam-evaluate baseline --init``).

    python benchmarks/bench_refine.py                       # trains the network first (~7 min here)
    python benchmarks/bench_refine.py --run runs/xception-v1 --images 200

The network is ``experiments/xception-v1-small-fast.yaml`` (the stride-4 Xception, 2 epochs on the
first 20,000 v1 images; make them with ``galparam-simulate data/v1-20k.yaml``) unless ``--run``
names a trained run whose images match the test sets (0.5″ PSF, σ 200–400). On the first
``--images`` images of the SNR 60 and SNR 30 test sets, in the same run: the network alone, the
baseline fit from adaptive moments and the fit started from the network's estimate — seconds per
image, iterations, and bias and spread of each against the Cramér–Rao bound; and, as the best
a network could do, the fit started at the true parameters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from galparam.baseline import network_starting_points, run_baseline
from galparam.data import load_dataset
from galparam.estimator import load_estimator
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.metrics import estimator_metrics
from galparam.parameters import LABEL_NAMES
from galparam.simulate import simulate
from galparam.specs import load_experiment, load_spec

ROOT = Path(__file__).resolve().parents[1]


def _network(args, out: Path) -> Path:
    if args.run:
        return Path(args.run)
    from galparam.train import train

    spec = load_experiment(ROOT / "experiments" / "xception-v1-small-fast.yaml")
    run_dir = out / spec.name
    print(f"training {spec.name} into {run_dir} (reused if finished)")
    return train(spec, run_dir, resume=True, verbose=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a trained run folder (default: train xception-v1-small-fast)")
    p.add_argument("--images", type=int, default=100, help="test images per SNR (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="fit workers (default: %(default)s, seconds per fit alone)")
    p.add_argument("--output", default=str(ROOT / "bench-results" / "refine"))
    args = p.parse_args()
    out = Path(args.output)
    run_dir = _network(args, out)
    estimator = load_estimator(run_dir)

    rows, speed = [], []
    for snr in (60, 30):
        data = out / f"test_snr{snr}-small.npz"
        if not data.exists():
            simulate(load_spec(ROOT / "data" / f"test_snr{snr}-small.yaml"), data, progress=False)
        ds = load_dataset(data)
        n = min(args.images, len(ds))
        truth = ds.label[0].astype(np.float64)
        bound = cramer_rao(truth, float(ds.psf_fwhm[0]), float(ds.sigma[0]), poisson=ds.spec.poisson_noise)

        start = time.perf_counter()
        network = estimator.predict(ds.img[:n])[list(LABEL_NAMES)].to_numpy()
        network_seconds = (time.perf_counter() - start) / n
        plain = run_baseline(data, out / f"baseline-snr{snr}.csv", n_images=n, jobs=args.jobs, overwrite=True)
        init, source = network_starting_points(run_dir, data, n)
        refined = run_baseline(
            data,
            out / f"refined-snr{snr}.csv",
            n_images=n,
            jobs=args.jobs,
            init=init,
            init_source=source,
            overwrite=True,
        )
        ideal = run_baseline(
            data,
            out / f"ideal-snr{snr}.csv",
            n_images=n,
            jobs=args.jobs,
            init=np.tile(truth, (n, 1)),
            init_source={"init_model": "the truth"},
            overwrite=True,
        )
        speed.append({"SNR": snr, "estimator": "network", "median s/image": network_seconds})
        for name, fits in (("baseline", plain), ("refined", refined), ("started at the truth", ideal)):
            speed.append(
                {
                    "SNR": snr,
                    "estimator": name,
                    "median s/image": fits.seconds.median(),
                    "mean s/image": fits.seconds.mean(),
                    "median iterations": fits.iterations.median(),
                    "median evaluations": fits.evaluations.median(),
                    "converged": f"{int(fits.converged.sum())}/{len(fits)}",
                    "from the given start": f"{int(fits.from_init.sum())}/{len(fits)}",
                }
            )
        estimates = {
            "network": network,
            "baseline": plain[list(LABEL_NAMES)].to_numpy(),
            "refined": refined[list(LABEL_NAMES)].to_numpy(),
        }
        metrics = {k: estimator_metrics(np.tile(truth, (n, 1)), v, bound.std.to_numpy()) for k, v in estimates.items()}
        for label in LABEL_NAMES:
            row = {"SNR": snr, "parameter": label, "CRB": bound.std[label]}
            for name, m in metrics.items():
                row[f"{name} bias/CRB"] = m.loc[label, "bias/crb"]
                row[f"{name} std/CRB"] = m.loc[label, "std/crb"]
            rows.append(row)
        same = np.abs(estimates["refined"] - estimates["baseline"]) / bound.std.to_numpy()
        print(f"SNR {snr}: refined and baseline estimates differ by a median {np.median(same):.3f} CRB")

    fmt = {"float_format": lambda v: f"{v:.3g}", "index": False}
    print(f"\nSpeed on the first {args.images} images of each test set ({args.jobs} fit worker(s); {run_dir.name})")
    print(pd.DataFrame(speed).to_string(**fmt))
    print("\nBias and spread over the Cramér-Rao bound (1 = the bound for std; 0 is unbiased)")
    print(pd.DataFrame(rows).to_string(**fmt))


if __name__ == "__main__":
    main()
