"""Posteriors: simulation-based calibration, the Laplace check, speed, and the Bayes risk at the
test galaxies (issue 26). Not in CI: ``make bench-posterior`` (about 50 minutes on 2 cores).

1. **Calibration** (v2 and v3, ``--sbc`` galaxies each, 2,000 by default, drawn from the prior by the simulator):
   the rank of each true parameter among its posterior's 1,000 equal-weight draws (ties of the
   discretized index split at random) should be uniform: Kolmogorov–Smirnov and 20-bin χ² p-values;
   the 68 and 95 % central intervals should cover 68 ± 3 and 95 ± 2 %.
2. **The Laplace check** (the SNR-60 test galaxy with σ = 10, SNR ≈ 1,200, under a flat prior): the posterior mean within 0.1
   bound of the fit, its standard deviation within 10 % of the inverse-Fisher error.
3. **Speed**: seconds per image (wall clock over the images, ``--jobs`` workers) and per process.
4. **The Bayes risk at the test galaxies** (SNR 60 and 30, ``--test`` images each, under v2's
   prior, the one the networks are trained on): the posterior mean's RMSE and the root of the mean
   posterior variance beside the Cramér–Rao bound and the fit's RMSE.
5. **The intervals' tails** (``--tails`` of the v2 draws): each galaxy's posterior with
   :data:`TAIL_REFERENCE_ESS` effective samples as the reference, and the default sampler's 16/84
   and 2.5/97.5 % quantiles from :data:`TAIL_SEEDS` seeds: the reference's mass outside each (2.5,
   16, 16, 2.5 % for exact quantiles), free of the calibration's binomial noise.

Everything is resumable: run it again to continue (``--out`` holds the datasets and posterior files).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from galparam.data import load_dataset
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.posterior import QUANTILE_NAMES, Posterior, PosteriorPrior
from galparam.io import write_text_atomic
from galparam.parameters import LABEL_NAMES
from galparam.posteriors import run_posterior
from galparam.simulate import simulate
from galparam.specs import load_spec, spec_from_dict
from galparam.specs.files import read_spec_file
from galparam.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SBC_BLOCK = 500  # prior draws the calibration's coverage targets are stated for
TAIL_REFERENCE_ESS = 20_000
TAIL_SEEDS = 5


def dataset(out: Path, spec_name: str, size: int, seed: int, jobs: int, sigma: float | None = None) -> Path:
    """A dataset of the shipped spec ``spec_name`` (``sigma``: its fixed noise replaced)."""
    path = out / f"{spec_name}{'' if sigma is None else f'-sigma{sigma:g}'}-{size}.npz"
    if not path.exists():
        raw = read_spec_file(ROOT / "data" / f"{spec_name}.yaml", "dataset spec")
        if sigma is not None:
            raw["priors"]["sigma"] = {"fixed": sigma}
            raw["name"] = f"{raw['name']}-sigma{sigma:g}"
        spec = spec_from_dict(raw, source=spec_name).with_overrides(size=size, seed=seed)
        simulate(spec, path, jobs=jobs)
    return path


def posteriors(path: Path, out: Path, jobs: int, prior=None, tag="") -> tuple[pd.DataFrame, np.ndarray]:
    csv = out / f"{path.stem}{tag}.posterior.csv"
    samples = out / f"{path.stem}{tag}.samples.npz"
    table = run_posterior(path, csv, prior_spec=prior, samples=samples, jobs=jobs)
    with np.load(samples, allow_pickle=False) as z:
        draws = z["samples"]
    return table, draws


def calibration(name: str, path: Path, table: pd.DataFrame, draws: np.ndarray) -> list[dict]:
    truth = load_dataset(path).label[table["index"].to_numpy()].astype(np.float64)
    rng = np.random.default_rng(0)
    rows = []
    for k, label in enumerate(LABEL_NAMES):
        t = truth[:, k : k + 1]
        d = draws[:, :, k]
        # the index's draws are grid values: the float32 label ties with those of its grid value
        close = np.abs(d - t) < 1e-5 if label == "sersic_n" else np.zeros_like(d, dtype=bool)
        below = ((d < t) & ~close).sum(axis=1)
        ties = close.sum(axis=1)
        rank = below + rng.integers(0, ties + 1)  # 0..L
        L = d.shape[1]
        u = (rank + rng.uniform(size=len(rank))) / (L + 1)
        counts = np.histogram(rank, bins=20, range=(0, L + 1))[0]
        lo68, hi68 = table[f"{label}_q16"], table[f"{label}_q84"]
        lo95, hi95 = table[f"{label}_q025"], table[f"{label}_q975"]
        x = truth[:, k]
        inside68 = ((lo68 <= x) & (x <= hi68)).to_numpy()
        inside95 = ((lo95 <= x) & (x <= hi95)).to_numpy()
        row = {
            "data": name,
            "parameter": label,
            "KS p": stats.kstest(u, "uniform").pvalue,
            "χ² p (20 bins)": stats.chisquare(counts).pvalue,
            "cover 68 %": 100 * inside68.mean(),
            "cover 95 %": 100 * inside95.mean(),
        }
        if len(x) >= 2 * SBC_BLOCK:  # the test is on 500 draws: each block of 500 on its own
            for level, inside in ((68, inside68), (95, inside95)):
                blocks = 100 * inside[: len(x) // SBC_BLOCK * SBC_BLOCK].reshape(-1, SBC_BLOCK).mean(axis=1)
                row[f"cover {level} % per {SBC_BLOCK} (min–max)"] = f"{blocks.min():.1f}–{blocks.max():.1f}"
        rows.append(row)
    return rows


def bayes_risk(name: str, path: Path, table: pd.DataFrame) -> list[dict]:
    ds = load_dataset(path)
    truth = ds.label[0].astype(np.float64)
    bound = cramer_rao(truth, float(ds.psf_fwhm[0]), float(ds.sigma[0]), poisson=ds.spec.poisson_noise)
    crb = np.sqrt(np.diag(bound.covariance))
    rows = []
    for k, label in enumerate(LABEL_NAMES):
        mean = table[f"{label}_mean"].to_numpy()
        fit = table[f"{label}_fit"].to_numpy()
        rmse_post = np.sqrt(np.mean((mean - truth[k]) ** 2))
        root_var = np.sqrt(np.mean(table[f"{label}_std"] ** 2))
        rows.append(
            {
                "test set": name,
                "parameter": label,
                "CRB σ": crb[k],
                "posterior mean RMSE": rmse_post,
                "√ mean posterior var": root_var,
                "posterior mean bias / CRB": (mean.mean() - truth[k]) / crb[k],
                "posterior mean RMSE / CRB": rmse_post / crb[k],
                "fit RMSE / CRB": np.sqrt(np.mean((fit - truth[k]) ** 2)) / crb[k],
                "fit bias / CRB": (fit.mean() - truth[k]) / crb[k],
            }
        )
    return rows


def laplace_check(table: pd.DataFrame) -> list[dict]:
    rows = []
    for label in LABEL_NAMES:
        err = table[f"{label}_fit_err"]
        rows.append(
            {
                "parameter": label,
                "median |mean − fit| / error": float(
                    np.median(np.abs(table[f"{label}_mean"] - table[f"{label}_fit"]) / err)
                ),
                "median std / error": float(np.median(table[f"{label}_std"] / err)),
            }
        )
    return rows


def _tail_masses(path: Path, indices: np.ndarray) -> np.ndarray:
    """(len(indices) · TAIL_SEEDS, 4, K): the reference posterior's mass below q025, below q16,
    above q84 and above q975 of the default sampler's runs."""
    ds = load_dataset(path)
    prior = PosteriorPrior.from_spec(ds.spec)
    data = (ds.img[indices].astype(np.float64), ds.psf_fwhm[indices], ds.sigma[indices])
    reference = Posterior(
        prior,
        poisson=ds.spec.poisson_noise,
        seed=10**6,
        target_ess=TAIL_REFERENCE_ESS,
        draws=8192,
        rounds=8,
        mcmc=False,
    ).sample(*data, indices=indices)
    out = []
    for seed in range(1, TAIL_SEEDS + 1):
        run = Posterior(prior, poisson=ds.spec.poisson_noise, seed=seed).sample(*data, indices=indices)
        for (draws, weights), q in zip(reference.samples_, run.quantiles_, strict=True):
            below = [(weights[:, None] * (draws < q[i])).sum(axis=0) for i in (0, 1)]
            above = [(weights[:, None] * (draws > q[i])).sum(axis=0) for i in (3, 4)]
            out.append(np.stack([*below, *above]))
    return np.array(out)


def tails(path: Path, count: int, jobs: int) -> list[dict]:
    """The reference's mass outside the default sampler's intervals (part 5 of the module docstring)."""
    parts = np.array_split(np.arange(count), jobs)
    with ProcessPoolExecutor(jobs) as pool:
        masses = np.concatenate(list(pool.map(_tail_masses, [path] * jobs, parts)))
    names = [f"mass below {QUANTILE_NAMES[0]}", f"below {QUANTILE_NAMES[1]}"]
    names += [f"above {QUANTILE_NAMES[3]}", f"above {QUANTILE_NAMES[4]}"]
    rows = []
    for k, label in enumerate(LABEL_NAMES):
        row = {"parameter": label}
        for i, name in enumerate(names):
            row[f"{name} %"] = 100 * masses[:, i, k].mean()
        row["outside the 68 % interval %"] = 100 * (masses[:, 1, k] + masses[:, 2, k]).mean()
        row["outside the 95 % interval %"] = 100 * (masses[:, 0, k] + masses[:, 3, k]).mean()
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench-posterior", help="working folder (resumable)")
    p.add_argument("--sbc", type=int, default=2000, help="prior draws of v2 and of v3 (default: %(default)s)")
    p.add_argument("--test", type=int, default=1000, help="images of each test set")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--tails", type=int, default=40, help="v2 draws whose intervals are checked against reference posteriors"
    )
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    v2 = load_spec(ROOT / "data" / "v2.yaml")
    speed, calib, risk = [], [], []
    paths = {}
    laplace = None
    # cheapest first: every part is resumable, and a part left unfinished leaves its rows out
    for name in ("v2", "test_snr60", "laplace", "v3", "test_snr30"):
        if name == "laplace":
            path = dataset(out, "test_snr60", 200, 2026, args.jobs, sigma=10.0)
            table, _ = posteriors(path, out, args.jobs, tag="-flat")
            laplace = laplace_check(table)
            speed.append(_speed("test galaxy at SNR ≈ 1,200 (flat prior)", table, args))
            continue
        path = paths[name] = dataset(out, name, args.sbc if name in ("v2", "v3") else args.test, 2026, args.jobs)
        if name in ("v2", "v3"):
            table, draws = posteriors(path, out, args.jobs)
            calib += calibration(name, path, table, draws)
        else:
            table, _ = posteriors(path, out, args.jobs, prior=v2, tag="-v2prior")
            risk += bayes_risk(name, path, table)
        speed.append(_speed(name, table, args))
    tail_rows = []
    if args.tails:
        # the part is minutes long: kept, as the posteriors are
        cached = out / f"{paths['v2'].stem}-tails-{args.tails}.json"
        if not cached.exists():
            write_text_atomic(
                cached, json.dumps(tails(paths["v2"], args.tails, args.jobs), indent=1)
            )  # columns in order
        tail_rows = json.loads(cached.read_text())
    report = [
        "## Calibration (simulation-based; ranks among 1,000 draws)",
        markdown_table(pd.DataFrame(calib)),
        "## Laplace check (the SNR-60 test galaxy at σ = 10, SNR ≈ 1,200, flat prior, 200 images)",
        markdown_table(pd.DataFrame(laplace)),
        "## Bayes risk at the test galaxies (v2 prior)",
        markdown_table(pd.DataFrame(risk)),
        "## Speed",
        markdown_table(pd.DataFrame(speed)),
    ]
    if tail_rows:
        report += [
            f"## The intervals' tails ({args.tails} v2 draws × {TAIL_SEEDS} seeds against "
            f"{TAIL_REFERENCE_ESS:,}-sample reference posteriors; exact quantiles: 2.5, 16, 16, 2.5)",
            markdown_table(pd.DataFrame(tail_rows)),
        ]
    text = "\n\n".join(report) + "\n"
    (out / "posterior.md").write_text(text)
    print(text)


def _speed(name, table, args) -> dict:
    methods = table["method"].value_counts()
    return {
        "data": name,
        "images": len(table),
        "importance": int(methods.get("importance", 0)),
        "mcmc": int(methods.get("mcmc", 0)),
        "median ESS": table["ess"].median(),
        "min ESS": table["ess"].min(),
        "median evaluations": table["evaluations"].median(),
        "s / image, mean per process": table["seconds"].mean(),
        f"s / image with {args.jobs} processes": table["seconds"].mean() / args.jobs,
    }


if __name__ == "__main__":
    main()
