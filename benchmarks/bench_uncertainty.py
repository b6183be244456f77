"""How far to trust each estimate, measured: ``python benchmarks/bench_uncertainty.py RUN_DIR OUT``.

For a run of an Xception with an uncertainty head (``uncertainty: diagonal`` or ``full``; e.g.
``experiments/xception-v1-small-uncertainty.yaml``) and the likelihood fit, on images the run never
saw:

1. held-out images from the run's training prior (its dataset spec with another seed) and both
   fixed-parameter test sets, drawn by the k-space renderer;
2. coverage of the 68 % and 95 % intervals by SNR bin as trained, with the run's one factor per
   label, and with its per-level intervals, with the median predicted spread over each image's own
   bound; with ``--ensemble``, the deep ensemble's; the likelihood fit's coverage (its
   inverse-Fisher errors) on its first ``--fits`` held-out images;
3. shear calibration m, c of the network and of the fit, and of the network after a calibration
   on simulations (m, c fitted on the first half of the held-out images, removed from the second);
4. efficiency maps (bias, spread and RMSE over each image's bound by quintiles of index, radius,
   flux and SNR) of the network, the fit and the network-started fit;
5. out-of-distribution flag rates on held-out images and on shifted ones (noise σ 500, PSF 1.2″).

Writes ``uncertainty.md`` (every table) and one CSV per table into OUT.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from galparam.parameters import LABEL_NAMES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run of an Xception with an uncertainty head")
    p.add_argument("output", type=Path, help="folder for the tables")
    p.add_argument("--images", type=int, default=5000, help="held-out images from the training prior (default 5,000)")
    p.add_argument("--test-images", type=int, default=2000, help="images of each test set (default 2,000)")
    p.add_argument("--fits", type=int, default=500, help="held-out images fitted by maximum likelihood (default 500)")
    p.add_argument("--shifted", type=int, default=500, help="images of each shifted set (default 500)")
    p.add_argument("--seed", type=int, default=777, help="seed of the held-out images (default 777)")
    p.add_argument("--data", type=Path, default=Path("bench-uncertainty-data"), help="where the drawn sets are kept")
    p.add_argument("--jobs", type=int, help="processes for drawing and fits (default: every core)")
    p.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="other runs of the same experiment (other seeds): the deep ensemble's coverage is measured too",
    )
    args = p.parse_args(argv)
    for name in ("images", "test_images", "fits", "shifted"):
        if getattr(args, name) < 10:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: a whole number >= 10 is accepted")
    if args.fits > args.images:
        p.error(f"--fits {args.fits}: at most --images ({args.images})")
    return args


def draw(spec, path: Path, jobs):
    from galparam.data import load_dataset
    from galparam.simulate import simulate

    if not (path.exists() and load_dataset(path).spec.digest() == spec.digest()):
        path.parent.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        simulate(spec, path, jobs=jobs, progress=False, overwrite=True)
        print(f"drew {path.name}: {spec.size:,} images in {time.perf_counter() - began:.0f} s", flush=True)
    return load_dataset(path)


def shifted_spec(spec, *, sigma=None, psf_fwhm=None, size: int, name: str):
    from galparam.specs import spec_from_dict

    raw = spec.to_dict()
    raw.update(name=name, size=size, seed=spec.seed + 1)
    if sigma is not None:
        raw["priors"]["sigma"] = {"fixed": sigma}
        raw["snr_window"] = [1, 1000]  # the shift moves SNRs; keep every galaxy
    if psf_fwhm is not None:
        raw["priors"]["psf_fwhm"] = {"fixed": psf_fwhm}
    return spec_from_dict(raw, source=name)


def main(argv=None) -> int:
    args = parse_args(argv)
    from galparam.baseline import run_baseline
    from galparam.estimator import calibrated_covariance, load_estimator
    from galparam.evaluate import ood
    from galparam.evaluate.crb import batch_bounds
    from galparam.evaluate.uncertainty import coverage_table, efficiency_map, shear_table
    from galparam.io import write_text_atomic
    from galparam.render import renderer_for
    from galparam.report.content import EFFICIENCY_BY, quantile_edges
    from galparam.runs import RunFolder
    from galparam.specs import load_spec
    from galparam.tables import markdown_table

    run = RunFolder(args.run)
    info = run.info()
    estimator = load_estimator(args.run)
    if estimator.uncertainty == "none":
        print(
            f"{args.run}: has no uncertainty head (uncertainty: none); train one with uncertainty: diagonal",
            file=sys.stderr,
        )
        return 2
    from galparam.data import load_dataset

    train_spec = load_dataset(info["dataset"]["path"]).spec
    held = draw(train_spec.with_overrides(size=args.images, seed=args.seed), args.data / "held-out.npz", args.jobs)
    tests = {
        snr: draw(
            load_spec(ROOT / "data" / f"test_snr{snr}.yaml").with_overrides(size=args.test_images),
            args.data / f"test_snr{snr}.npz",
            args.jobs,
        )
        for snr in (60, 30)
    }
    renderer = renderer_for("kspace", train_spec.geometry)
    truth = held.label.astype(np.float64)
    cov = batch_bounds(truth, held.psf_fwhm, held.sigma, poisson=train_spec.poisson_noise, renderer=renderer)
    bound = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    tables = {}

    # coverage: as trained, with one factor per label, with each level's own interval; the ensemble's
    rows = []
    ensemble = None
    if args.ensemble:
        from galparam.estimator import load_ensemble

        ensemble = load_ensemble([args.run, *args.ensemble])
    for name, ds, t in [("held-out", held, truth)] + [
        (f"test set SNR {s}", d, d.label.astype(np.float64)) for s, d in tests.items()
    ]:
        psf = ds.psf_img if estimator.psf_input else None
        b = bound if ds is held else None
        snr = ds.snr if ds is held else np.full(len(ds), 1e9)
        mean, raw = estimator.predict_distribution(ds.img, psf, calibrated=False)
        predictions = [
            ("as trained", mean, raw, None),
            ("one factor per label", mean, calibrated_covariance(raw, estimator.calibration), None),
        ]
        predictions.append(("per-level intervals", *predictions[-1][1:3], estimator.interval_scale))
        if ensemble is not None:
            label = f"ensemble of {len(ensemble.members)}"
            mean, raw = ensemble.predict_distribution(ds.img, psf, calibrated=False)
            predictions.append((f"{label}, members calibrated", mean, raw, None))
            predictions.append(
                (f"{label}, one factor per label", mean, calibrated_covariance(raw, ensemble.calibration), None)
            )
            predictions.append((f"{label}, per-level intervals", *predictions[-1][1:3], ensemble.interval_scale))
        for calibration, mean, c, scale in predictions:
            if calibration.endswith("per-level intervals") and scale is None:
                continue  # a run calibrated before the per-level intervals
            std = np.sqrt(np.diagonal(c, axis1=1, axis2=2))
            table = coverage_table(t, mean, std, snr, bound=b, interval_scale=scale)
            if ds is not held:
                table = table[table.snr_bin == "all"]
            rows.append(table.assign(images_from=name, calibration=calibration))
        if ds is held:
            estimates, estimates_std = predictions[1][1], np.sqrt(np.diagonal(predictions[1][2], axis1=1, axis2=2))
    fits_path = args.output / "fits-held-out.csv"
    fits = run_baseline(
        args.data / "held-out.npz", fits_path, n_images=args.fits, jobs=args.jobs, progress=False, overwrite=True
    )
    fit_est = fits[list(LABEL_NAMES)].to_numpy()
    started = run_baseline(
        args.data / "held-out.npz",
        args.output / "fits-held-out-from-network.csv",
        n_images=args.fits,
        jobs=args.jobs,
        init=estimates[: args.fits],
        progress=False,
        overwrite=True,
    )
    started_est = started[list(LABEL_NAMES)].to_numpy()
    for name, frame, values in (("likelihood fit", fits, fit_est), ("network-started fit", started, started_est)):
        errors = frame[[f"{n}_err" for n in LABEL_NAMES]].to_numpy()
        table = coverage_table(truth[: args.fits], values, errors, held.snr[: args.fits], bound=bound[: args.fits])
        rows.append(table.assign(images_from=f"held-out ({name}, inverse-Fisher errors)", calibration="none"))
    tables["coverage"] = pd.concat(rows, ignore_index=True)

    # shear calibration: the network, the network calibrated on simulations, the fit
    half = len(truth) // 2
    first = shear_table(truth[:half], estimates[:half])
    corrected = estimates.copy()
    for k, comp in ((3, "g1"), (4, "g2")):
        m, c = first.set_index("component").loc[comp, ["m", "c"]]
        corrected[:, k] = (estimates[:, k] - c) / (1 + m)
    tables["shear"] = pd.concat(
        [
            shear_table(truth, estimates, held.snr).assign(estimator="xception"),
            shear_table(truth[half:], corrected[half:], held.snr[half:]).assign(
                estimator="xception, m and c removed (fitted on the other half)"
            ),
            shear_table(truth[: args.fits], fit_est, held.snr[: args.fits]).assign(estimator="likelihood fit"),
            shear_table(truth[: args.fits], started_est, held.snr[: args.fits]).assign(estimator="network-started fit"),
        ],
        ignore_index=True,
    )

    # efficiency maps
    columns = {**{n: truth[:, k] for k, n in enumerate(LABEL_NAMES)}, "snr": held.snr, "psf_fwhm": held.psf_fwhm}
    maps = []
    for by in EFFICIENCY_BY:
        edges = quantile_edges(columns[by])
        if len(edges) > 2:
            maps.append(
                efficiency_map(truth, estimates, bound, columns[by], edges, name="bin", spread=estimates_std).assign(
                    by=by, estimator="xception"
                )
            )
            for name, frame, values in (
                ("likelihood fit", fits, fit_est),
                ("network-started fit", started, started_est),
            ):
                maps.append(
                    efficiency_map(
                        truth[: args.fits],
                        values,
                        bound[: args.fits],
                        columns[by][: args.fits],
                        edges,
                        name="bin",
                        spread=frame[[f"{n}_err" for n in LABEL_NAMES]].to_numpy(),
                    ).assign(by=by, estimator=name)
                )
    tables["efficiency"] = pd.concat(maps, ignore_index=True)

    # out-of-distribution flags
    flag_rows = []
    if "training_range" in info:
        sets = {
            "held-out (in distribution)": held,
            "noise sigma 500": draw(
                shifted_spec(train_spec, sigma=500, size=args.shifted, name="shift-sigma500"),
                args.data / "shift-sigma500.npz",
                args.jobs,
            ),
            "PSF FWHM 1.2 arcsec": draw(
                shifted_spec(train_spec, psf_fwhm=1.2, size=args.shifted, name="shift-psf1.2"),
                args.data / "shift-psf1.2.npz",
                args.jobs,
            ),
        }
        for name, ds in sets.items():
            n = min(len(ds), args.shifted)
            est = estimator.predict(ds.img[:n])[list(LABEL_NAMES)].to_numpy()
            for given in (True, False):
                checked = ood.check_images(
                    info,
                    ds.img[:n],
                    est,
                    sigma=ds.sigma[:n] if given else None,
                    psf_fwhm=ds.psf_fwhm[:n] if given else None,
                )
                reasons = checked.ood_reason.str.split("; ").explode()
                kinds = (
                    reasons[reasons != ""].str.extract(r"^(noise sigma|PSF FWHM|SNR|chi2 per pixel)")[0].value_counts()
                )
                flag_rows.append(
                    {
                        "images": name,
                        "sigma and PSF": "from the dataset" if given else "measured from the images",
                        "n": n,
                        "flagged": float(checked.ood.mean()),
                        **{
                            f"reason: {k}": float(kinds.get(k, 0) / n)
                            for k in ("noise sigma", "PSF FWHM", "SNR", "chi2 per pixel")
                        },
                    }
                )
        tables["ood"] = pd.DataFrame(flag_rows)

    args.output.mkdir(parents=True, exist_ok=True)
    lines = [f"# Uncertainty benchmark: {info['name']} ({estimator.uncertainty} head) and the likelihood fit", ""]
    for name, table in tables.items():
        write_text_atomic(args.output / f"{name}.csv", table.to_csv(index=False, float_format="%.6g"))
        lines += [f"## {name}", "", markdown_table(table)]
    write_text_atomic(args.output / "uncertainty.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
