"""Training toward the floor (issue 26, part 3): ``make bench-losses`` (not in CI).

The stride-4 Xception (the default Xception with an entry stride of 4) trained on fresh v2 images
with each label loss an experiment can choose, the same images for each (``--epochs`` ×
``--images-per-epoch``, the same seed, validation set and batch size):

- ``mse``: the default; its optimum is the posterior mean, whose RMSE is the Bayes risk's root;
- ``gaussian_nll``: the diagonal uncertainty head (``uncertainty: diagonal``);
- ``bound_scaled_mse``: the squared error over each image's Cramér–Rao bound;
- ``bias_penalized_mse``: ``noise_replicas`` (8) realizations of each galaxy a batch, the squared
  mean error of each galaxy's realizations weighted by ``BIAS_WEIGHT``.

Each network is then measured on images with posteriors under v2's prior (``--posteriors``:
``galparam-evaluate posterior`` of a dataset drawn from v2, e.g. ``make bench-posterior``'s
``v2-2000``): per cell of SNR, and of index, radius and flux among the images above SNR 20, its RMSE
over the root of the mean posterior variance (√MMSE, the Bayes risk: 1 is the best any estimator can
do given the prior) and over the pointwise bound, against the issue's goal (≤ 1.25 for flux, radius
and shear, ≤ 1.5 for the index, in every cell above SNR 20); and at the fixed test galaxies
(``--test-sets`` with their ``--test-posteriors``) its bias and spread over the bound and RMSE over
√MMSE.

Then every estimator side by side (``--out``/report, ``galparam-evaluate report``): the networks on
their validation images, the likelihood fit and the fit started from the MSE network on the
posteriors' images and the test sets, and the posterior mean itself, each with its efficiency maps'
RMSE over the pointwise bound and over √MMSE in every cell (the cells' Bayes risk from the
posteriors in the same cell).

Writes ``losses.md`` and one CSV per table into ``--out``; training and fits are resumable (run it
again).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from galparam import load_estimator  # noqa: E402
from galparam.data import load_dataset  # noqa: E402
from galparam.evaluate.crb import dataset_bounds  # noqa: E402
from galparam.io import write_text_atomic  # noqa: E402
from galparam.parameters import LABEL_NAMES  # noqa: E402
from galparam.tables import markdown_table  # noqa: E402

LOSSES = {
    "mse": {"loss": "mse"},
    "gaussian_nll": {"uncertainty": "diagonal"},
    "bound_scaled_mse": {"loss": "bound_scaled_mse"},
    "bias_penalized_mse": {"loss": "bias_penalized_mse", "noise_replicas": 8},
}
GOAL = {"flux": 1.25, "sersic_n": 1.5, "hlr": 1.25, "g1": 1.25, "g2": 1.25}
"""The issue's goal: RMSE over √MMSE in every cell above SNR 20."""
SNR_EDGES = (0.0, 20.0, 30.0, 45.0, 70.0, np.inf)
MIN_SNR = 20.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-losses"), help="working folder (resumable)")
    p.add_argument("--posteriors", type=Path, required=True, help="posteriors of a dataset drawn from v2's prior")
    p.add_argument("--test-sets", type=Path, nargs="*", default=[], help="fixed-parameter test sets (SNR 60, 30)")
    p.add_argument("--test-posteriors", type=Path, nargs="*", default=[], help="their posteriors under v2's prior")
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument("--images-per-epoch", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--validation", type=int, default=2_000, help="images of the fixed validation set")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    if len(args.test_posteriors) not in (0, len(args.test_sets)):
        p.error("--test-posteriors: one per test set, in the same order")
    return args


def experiment(loss: str, args) -> dict:
    total = args.images_per_epoch + args.validation
    return {
        "name": f"losses-{loss}",
        "family": "xception",
        "dataset": {"spec": str(ROOT / "data" / "v2.yaml"), "on_the_fly": True},
        "hyperparameters": {"initial_strides": 4},
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "patience": 0,
        "max_images": total,
        "validation_fraction": args.validation / total,
        "seed": 0,
        **LOSSES[loss],
    }


def train(loss: str, args) -> tuple[Path, float]:
    """Train (or resume, or find finished) the run of ``loss``; its training wall clock."""
    folder = args.out / loss
    spec_path = args.out / f"{loss}.yaml"
    spec_path.write_text(yaml.safe_dump(experiment(loss, args)))
    run = folder / "run"
    if not (run / "run.json").exists():
        resume = ["--resume"] if run.exists() else []
        started = time.perf_counter()
        command = [str(Path(sys.executable).parent / "galparam-train"), "run", str(spec_path), "-o", str(run), *resume]
        subprocess.run(command, check=True)
        (folder / "seconds").write_text(f"{time.perf_counter() - started:.1f}\n")
    seconds = float((folder / "seconds").read_text()) if (folder / "seconds").exists() else float("nan")
    return run, seconds


def read_posteriors(path: Path) -> pd.DataFrame:
    """A posterior file's complete rows (one still being written is read up to its last full line,
    and left as it is)."""
    data = Path(path).read_bytes()
    table = pd.read_csv(io.BytesIO(data[: data.rfind(b"\n") + 1]))
    # a file resumed from its header alone, before galparam wrote the header only once, has it twice
    table = table[table["index"].astype(str) != "index"]
    return table.apply(lambda column: column if column.name == "method" else pd.to_numeric(column))


def rms(x, axis=0):
    return np.sqrt(np.mean(np.square(x), axis=axis))


def cell_table(loss: str, estimator, posteriors: pd.DataFrame, ds) -> pd.DataFrame:
    """RMSE over √MMSE and over the bound per cell: by SNR, and by index, radius and flux tertiles
    among the images above :data:`MIN_SNR`."""
    index = posteriors["index"].to_numpy()
    truth = ds.label[index].astype(np.float64)
    predicted = estimator.predict(ds.img[index])[list(LABEL_NAMES)].to_numpy(np.float64)
    variance = posteriors[[f"{n}_std" for n in LABEL_NAMES]].to_numpy(np.float64) ** 2
    bound = dataset_bounds(ds, index, progress=False).to_numpy()
    snr = ds.snr[index]
    cells = [("snr", lo, hi, (snr >= lo) & (snr < hi)) for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True)]
    bright = snr >= MIN_SNR
    for k, name in enumerate(LABEL_NAMES[:3]):
        edges = np.quantile(truth[bright, k], [0, 1 / 3, 2 / 3, 1])
        edges[-1] = np.nextafter(edges[-1], np.inf)
        cells += [(f"{name} (SNR≥20)", lo, hi, bright & (truth[:, k] >= lo) & (truth[:, k] < hi))
                  for lo, hi in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip
    rows = []
    for by, lo, hi, mask in cells:
        if mask.sum() < 10:
            continue
        error = predicted[mask] - truth[mask]
        for k, name in enumerate(LABEL_NAMES):
            rows.append(
                {
                    "loss": loss,
                    "by": by,
                    "cell": f"[{lo:.4g}, {hi:.4g})",
                    "images": int(mask.sum()),
                    "parameter": name,
                    "rms err/√MMSE": rms(error[:, k]) / np.sqrt(variance[mask, k].mean()),
                    "rms err/crb": rms(error[:, k] / bound[mask, k]),
                    "mean err/crb": float(np.mean(error[:, k] / bound[mask, k])),
                    "above SNR 20": by != "snr" or lo >= MIN_SNR,
                }
            )
    return pd.DataFrame(rows)


def test_table(loss: str, estimator, args) -> pd.DataFrame:
    rows = []
    for k, path in enumerate(args.test_sets):
        ds = load_dataset(path)
        predicted = estimator.predict(ds.img)[list(LABEL_NAMES)].to_numpy(np.float64)
        truth = ds.label.astype(np.float64)
        bound = dataset_bounds(ds, [0], progress=False).to_numpy()[0]
        root_mmse = None
        if args.test_posteriors:
            post = read_posteriors(args.test_posteriors[k])
            root_mmse = np.sqrt(np.mean(post[[f"{n}_std" for n in LABEL_NAMES]].to_numpy() ** 2, axis=0))
        error = predicted - truth
        for j, name in enumerate(LABEL_NAMES):
            row = {
                "loss": loss,
                "test set": ds.spec.name,
                "posteriors": 0 if root_mmse is None else len(post),
                "parameter": name,
                "bias/crb": error[:, j].mean() / bound[j],
                "std/crb": error[:, j].std(ddof=1) / bound[j],
                "rmse/crb": rms(error[:, j]) / bound[j],
            }
            if root_mmse is not None:
                row["rmse/√MMSE"] = rms(error[:, j]) / root_mmse[j]
            rows.append(row)
    return pd.DataFrame(rows)


def every_estimator(runs: dict, data: Path, posteriors: pd.DataFrame, args) -> pd.DataFrame:
    """The report of every estimator (the loss runs, the fit and the MSE-started fit on ``data``,
    the posteriors' dataset, and the posterior mean) in ``--out``/report; per estimator and
    parameter, its efficiency cells' median and worst RMSE over the bound and over √MMSE."""
    tools = Path(sys.executable).parent
    n_images = str(int(posteriors["index"].max()) + 1)
    fits = []
    for path, limit in [(data, n_images)] + [(t, None) for t in args.test_sets]:
        for init in (None, "mse"):
            if init and init not in runs:
                continue
            out = args.out / "fits" / f"{'baseline' if init is None else 'refined-' + init}-{path.stem}.csv"
            command = [str(tools / "galparam-evaluate"), "baseline", str(path), "-o", str(out)]
            command += ["--n-images", limit] if limit else []
            command += ["--init", str(runs[init])] if init else []
            subprocess.run(command, check=True)
            fits.append(out)
    command = [str(tools / "galparam-evaluate"), "report", "-o", str(args.out / "report"),
               "--runs", *map(str, runs.values()), "--test-sets", *map(str, args.test_sets),
               "--fits", *map(str, fits), "--posteriors", str(args.posteriors), *map(str, args.test_posteriors)]  # fmt: skip
    subprocess.run(command, check=True)
    efficiency = pd.read_csv(args.out / "report" / "efficiency.csv", comment="#")
    ratios = ["rms err/crb", "rms err/√MMSE"]
    out = efficiency.groupby(["model", "parameter"], sort=False)[ratios].agg(["median", "max"])
    out.columns = [f"{ratio} {stat}" for ratio, stat in out.columns]
    return out.reset_index()


def worst_above_20(cells: pd.DataFrame) -> pd.DataFrame:
    """Per loss and parameter: the largest RMSE over √MMSE among the cells above SNR 20, and the goal."""
    above = cells[cells["above SNR 20"]]
    out = above.groupby(["loss", "parameter"], sort=False)["rms err/√MMSE"].agg(["median", "max"]).reset_index()
    out["goal"] = out["parameter"].map(GOAL)
    out["meets goal"] = out["max"] <= out["goal"]
    return out.rename(columns={"median": "median over cells", "max": "worst cell"})


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(Path(f"{args.posteriors}.json").read_text())
    ds = load_dataset(manifest["dataset"])
    posteriors = read_posteriors(args.posteriors)
    cells, tests, runs, run_dirs = [], [], [], {}
    for loss in args.losses:
        run, seconds = train(loss, args)
        run_dirs[loss] = run
        estimator = load_estimator(run)
        history = pd.read_csv(run / "history.csv")
        runs.append({"loss": loss, "training s": seconds, "epochs": len(history),
                     "images": len(history) * args.images_per_epoch})  # fmt: skip
        cells.append(cell_table(loss, estimator, posteriors, ds))
        tests.append(test_table(loss, estimator, args))
    cells, tests, runs = pd.concat(cells), pd.concat(tests), pd.DataFrame(runs)
    worst = worst_above_20(cells)
    estimators = every_estimator(run_dirs, Path(manifest["dataset"]), posteriors, args)
    tables = (("cells", cells), ("test_sets", tests), ("runs", runs), ("goal", worst), ("estimators", estimators))
    for name, table in tables:
        table.to_csv(args.out / f"{name}.csv", index=False)
    snr_cells = cells[cells["by"] == "snr"].pivot_table(
        index=["parameter", "cell"], columns="loss", values="rms err/√MMSE", sort=False
    )
    text = "\n\n".join(
        [
            f"# Training toward the floor\n\nPosteriors: {args.posteriors} ({len(posteriors)} images of "
            f"{ds.spec.name}); {args.epochs} epochs × {args.images_per_epoch} fresh v2 images a loss.",
            "## Runs\n\n" + markdown_table(runs),
            "## Worst cell above SNR 20 (RMSE / √MMSE) against the goal\n\n" + markdown_table(worst),
            "## RMSE / √MMSE by SNR\n\n" + markdown_table(snr_cells.reset_index()),
            "## Every cell\n\n" + markdown_table(cells),
            "## The test galaxies\n\n" + markdown_table(tests),
            "## Every estimator's efficiency cells (the report's bins: index, radius, flux, SNR; "
            f"{args.out / 'report'}): median and worst over its cells\n\n" + markdown_table(estimators),
        ]
    )
    write_text_atomic(args.out / "losses.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
