"""What a report holds, computed: the tables and what its figures draw, from runs, test sets and
fits. Nothing here writes a file (:func:`galparam.report.write_report` writes them).

- ``test_table``: for each test set (SNR 60, 30) and parameter, the Cramér–Rao bound, then the
  bias and standard deviation of each estimator (each network, the likelihood baseline, the
  likelihood fit started from a network's estimate).
- ``validation_table``: each model's validation RMSE and explained variance per parameter, on its
  own training dataset (from its ``metrics.json``), and its pipeline (the Xception alone, a
  denoiser then the Xception, or the two trained jointly).
- ``denoising_table``: for each denoiser run (EDSR, RDN), by SNR bin of its validation split, the
  residual RMS (counts), PSNR and SSIM of the noisy and the denoised images and the PSNR gain.
- ``efficiency_table``: each network's (and each fit of a prior-drawn dataset's) bias, spread
  and RMSE in units of each image's own Cramér–Rao bound, by quintiles of Sérsic index, radius,
  flux, SNR and PSF FWHM.
- ``shear_table``: multiplicative and additive shear biases m and c with their standard errors,
  overall and by SNR bin, against LSST's requirement.
- ``coverage_table``: for networks with an uncertainty head (and fits, by their inverse-Fisher
  errors), the coverage of their 68 % and 95 % intervals by SNR bin and on each test set, with the
  median predicted spread over the bound (below 1 claims more than any unbiased estimator can).

Each table has a provenance header (galparam version, git commit, SHA-256 of each dataset and
model); numbers are printed with fixed formats, so the same inputs give byte-identical tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.estimator import DENOISERS, load_denoiser, load_estimator
from galparam.evaluate.crb import batch_bounds, cramer_rao, dataset_bounds
from galparam.evaluate.metrics import estimator_metrics
from galparam.evaluate.restoration import restoration_by_snr
from galparam.evaluate.uncertainty import coverage, coverage_table, efficiency_map, reliability, shear_table
from galparam.parameters import LABEL_NAMES
from galparam.render import KSpaceRenderer, renderer_for
from galparam.report.layout import Contents
from galparam.row_files import read_row_file
from galparam.runs import RunFolder
from galparam.tables import provenance, sha256

PLOT_SAMPLE = 2000
"""Validation images a network is measured and drawn on."""


@dataclass
class Validated:
    """A network (or a fit of a prior-drawn dataset) measured on images with known parameters:
    the dataset, the images' indices, their truth and estimates, and :func:`validation_checks`."""

    dataset: object
    indices: np.ndarray
    truth: np.ndarray
    predicted: np.ndarray
    checks: dict


@dataclass
class Report:
    """A report: its tables, what its figures draw, and (once written) its folder and files."""

    test_table: pd.DataFrame
    validation_table: pd.DataFrame
    header: list = field(default_factory=list)
    folder: Path | None = None
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    datasets_table: pd.DataFrame | None = None  # filled by galparam.study.Study.report
    denoising_table: pd.DataFrame | None = None
    efficiency_table: pd.DataFrame | None = None
    shear_table: pd.DataFrame | None = None
    coverage_table: pd.DataFrame | None = None
    search_tables: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    """Table stem → its own header, where it is not :attr:`header` (the datasets', the searches')."""
    contents: Contents = field(default_factory=Contents)
    test_sets: dict = field(default_factory=dict)
    """SNR → :class:`TestSet`."""
    estimates: dict = field(default_factory=dict)
    """SNR → {estimator name: (N, 5) estimates of the test set's first images}."""
    restored: dict = field(default_factory=dict)
    """Denoiser name → (dataset, validation indices, restored images)."""
    validated: dict = field(default_factory=dict)
    """Network name, or a prior-drawn dataset's fit's name → :class:`Validated`."""
    search_plots: dict = field(default_factory=dict)
    """Search name → its trials' figure (``score_vs_parameters.png``)."""


@dataclass
class TestSet:
    """A fixed-parameter test set: its file, dataset, SNR, true parameters and their bound."""

    path: Path
    dataset: object
    snr: int
    truth: np.ndarray
    bound: np.ndarray


def load_test_set(path) -> TestSet:
    ds = load_dataset(path)
    if not (np.ptp(ds.label, axis=0) == 0).all() or np.ptp(ds.psf_fwhm) or np.ptp(ds.sigma) or ds.spec.stamp_model:
        raise GalparamError(f"{path}: not a fixed-parameter test set (its labels, PSF, noise, centre or sky vary)")
    truth = ds.label[0].astype(np.float64)
    bound = cramer_rao(truth, float(ds.psf_fwhm[0]), float(ds.sigma[0]), poisson=ds.spec.poisson_noise)
    return TestSet(Path(path), ds, int(round(float(np.median(ds.snr)))), truth, bound.std.to_numpy())


def read_fits(path) -> tuple[pd.DataFrame, dict]:
    """A fits file (``galparam-evaluate baseline``'s) and the manifest beside it."""
    required = ("index", *LABEL_NAMES, "converged")
    return read_row_file(path, required, kind="fits", source="galparam-evaluate baseline")


def read_posteriors(path) -> tuple[pd.DataFrame, dict]:
    """A posterior file (``galparam-evaluate posterior``'s) and the manifest beside it."""
    required = ("index", *(f"{n}_{s}" for n in LABEL_NAMES for s in ("mean", "std")))
    return read_row_file(path, required, kind="posteriors", source="galparam-evaluate posterior")


def estimator_name(manifest: dict) -> str:
    """A fit's name in the tables: ``baseline``, or ``refined NAME`` (started from a network's estimates)."""
    init = manifest.get("init", "")
    return "baseline" if init in ("adaptive moments", "") else f"refined {manifest.get('init_model', 'network')}"


def bound_table(test_sets, estimates: dict, bayes_risk: dict | None = None) -> pd.DataFrame:
    """Rows (SNR, parameter): the bound, then the bias and std of each estimator; with the Bayes
    risk of a test set, its root (``√MMSE``) and each estimator's RMSE over it.

    Parameters
    ----------
    test_sets : list of TestSet
        The loaded test sets, with their truth and bound.
    estimates : dict
        ``{snr: {estimator name: (N, 5) estimates of the first N images}}``.
    bayes_risk : dict, optional
        ``{snr: (5,) root mean posterior variance}`` (:func:`read_posteriors`).
    """
    bayes_risk = bayes_risk or {}
    rows = []
    for ts in sorted(test_sets, key=lambda t: -t.snr):
        metrics = {
            name: estimator_metrics(np.tile(ts.truth, (len(values), 1)), values, ts.bound)
            for name, values in estimates.get(ts.snr, {}).items()
        }
        root_mmse = bayes_risk.get(ts.snr)
        for i, label in enumerate(LABEL_NAMES):
            row = {"SNR": ts.snr, "parameter": label, "CRB": ts.bound[i]}
            if root_mmse is not None:
                row["√MMSE"] = root_mmse[i]
            for name, m in metrics.items():
                row[f"{name} bias"] = m.loc[label, "bias"]
                row[f"{name} std"] = m.loc[label, "std"]
                if root_mmse is not None:
                    rmse = np.sqrt(np.mean((estimates[ts.snr][name][:, i] - ts.truth[i]) ** 2))
                    row[f"{name} rmse/√MMSE"] = rmse / root_mmse[i]
            rows.append(row)
    return pd.DataFrame(rows)


def pipeline_name(info: dict) -> str:
    """How a run measures: ``xception``, ``edsr d → xception`` (two stages) or ``joint edsr d + xception``."""
    denoiser = info.get("denoiser")
    if denoiser is None:
        return info["family"]
    stages = f"{denoiser['family']} {denoiser['name']}"
    return f"joint {stages} + {info['family']}" if info.get("joint") else f"{stages} → {info['family']}"


def validation_table(runs) -> pd.DataFrame:
    """Rows (model, dataset): the pipeline, validation RMSE and explained variance per parameter."""
    rows = []
    for run_dir, info in runs:
        metrics = RunFolder(run_dir).metrics()
        row = {"model": info["name"], "pipeline": pipeline_name(info), "dataset": info["dataset"]["name"]}
        for label in LABEL_NAMES:
            row[f"{label} RMSE"] = metrics[label]["rmse"]
            row[f"{label} EV"] = metrics[label]["explained_variance"]
        rows.append(row)
    return pd.DataFrame(rows)


def denoising_table(denoisers) -> pd.DataFrame:
    """Rows (denoiser, SNR bin): images, residual RMS, PSNR and SSIM of the noisy and the denoised
    images of its validation split, and the PSNR gain (:func:`~galparam.evaluate.restoration.restoration_by_snr`).

    Parameters
    ----------
    denoisers : sequence of tuple
        Per denoiser: its name, its dataset, the validation indices and their denoised images.
    """
    tables = []
    for name, ds, val, denoised in denoisers:
        table = restoration_by_snr(ds.img[val], denoised, ds.img_nonoise[val], ds.snr[val])
        table.insert(0, "model", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


EFFICIENCY_BY = ("sersic_n", "hlr", "flux", "snr", "psf_fwhm")
"""What the efficiency maps bin by (each in quintiles of the validation split; a constant one is left out)."""


def quantile_edges(values, bins: int = 5) -> np.ndarray:
    edges = np.unique(np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def validation_checks(
    name: str, ds, val, truth, predicted, predicted_cov=None, interval_scale=None, bayes=None
) -> dict:
    """A network's validation split measured against each image's own bound.

    ``predicted`` are its estimates (N, 5), ``predicted_cov`` their calibrated covariances
    (N, 5, 5; None without an uncertainty head) and ``interval_scale`` the run's per-level
    interval calibration (:attr:`galparam.estimator.Estimator.interval_scale`), which the
    coverage of the 68 % and 95 % intervals uses where it is given. ``bayes`` (:class:`BayesCells`,
    posteriors of images of the same prior) adds each efficiency cell's RMSE over the Bayes risk's root.

    Returns
    -------
    dict of DataFrame
        ``efficiency`` (:func:`~galparam.evaluate.uncertainty.efficiency_map` by each of
        :data:`EFFICIENCY_BY`), ``shear`` (m and c by SNR bin) and, for a run with an uncertainty
        head, ``coverage`` (by SNR bin, with the median predicted spread over the bound) and
        ``reliability``; each table's first column is the model.
    """
    spec = ds.spec
    if spec.stamp_model:  # each image's own PSF, centre and sky
        bound = dataset_bounds(ds, np.asarray(val), progress=False).to_numpy()
    else:
        renderer = renderer_for(KSpaceRenderer.NAME, spec.geometry)
        cov = batch_bounds(truth, ds.psf_fwhm[val], ds.sigma[val], poisson=spec.poisson_noise, renderer=renderer)
        bound = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    columns = {**{n: truth[:, k] for k, n in enumerate(LABEL_NAMES)}, "snr": ds.snr[val], "psf_fwhm": ds.psf_fwhm[val]}
    std = None if predicted_cov is None else np.sqrt(np.diagonal(predicted_cov, axis1=1, axis2=2))
    maps = []
    for by in EFFICIENCY_BY:
        edges = quantile_edges(columns[by])
        if len(edges) > 2:
            cells = None if bayes is None else (bayes.columns[by], bayes.variance)
            maps.append(
                efficiency_map(truth, predicted, bound, columns[by], edges, name="bin", spread=std, bayes=cells).assign(
                    by=by
                )
            )
    efficiency_columns = ["model", "by", "bin", "parameter", "images", "mean err/crb", "std err/crb", "rms err/crb"]
    efficiency_columns += ["rms err/√MMSE"] if bayes is not None else []
    out = {
        "efficiency": pd.concat(maps, ignore_index=True)
        .pipe(_first, "model", name)
        .reindex(columns=efficiency_columns + ["claimed std/crb"]),
        "shear": _first(shear_table(truth, predicted, ds.snr[val]), "model", name),
    }
    if predicted_cov is not None:
        table = coverage_table(truth, predicted, std, ds.snr[val], bound=bound, interval_scale=interval_scale)
        out["coverage"] = _first(table, "model", name)
        out["reliability"] = reliability(truth, predicted, std)
    return out


def _validation_sample(run_dir, info: dict, report, what: str):
    """A run's dataset and the first :data:`PLOT_SAMPLE` of its validation indices, or None (and
    a note that ``what`` was skipped) where its dataset is gone."""
    data_path = Path(info["dataset"]["path"])
    if not data_path.exists():
        report.notes.append(f"{info['name']}: {what} skipped, its dataset {data_path} is gone")
        return None
    return load_dataset(data_path, mmap=True), RunFolder(run_dir).validation_indices(info)[:PLOT_SAMPLE]


@dataclass
class BayesCells:
    """Posteriors of images drawn from a prior: their dataset, what the efficiency maps bin them by
    (:data:`EFFICIENCY_BY` → (M,) values) and their posterior variances (M, 5)."""

    dataset: object
    columns: dict
    variance: np.ndarray


def same_prior(a, b) -> bool:
    """Whether two dataset specs draw from the same prior (all but name, size, seed and split)."""
    drop = ("name", "size", "seed", "validation_fraction")
    return {k: v for k, v in a.to_dict().items() if k not in drop} == {
        k: v for k, v in b.to_dict().items() if k not in drop
    }


def _prior_posteriors(path: Path, table: pd.DataFrame, manifest: dict):
    """Posteriors of a dataset drawn from a prior: the posterior mean as a prior fit's entry
    (:func:`_prior_fits`'s tuple) and the :class:`BayesCells`."""
    dataset = Path(manifest.get("dataset", ""))
    if not dataset.is_file():
        raise GalparamError(f"{path}: posteriors of {dataset}, which is neither among the test sets given nor on disk")
    ds = load_dataset(dataset, mmap=True)
    if manifest.get("dataset_spec_digest") not in (None, ds.spec.digest()):
        raise GalparamError(
            f"{path}: posteriors of another draw of {dataset} (its spec digest differs); run them again"
        )
    if len(ds) > 1 and not np.ptp(ds.label, axis=0).any():
        raise GalparamError(
            f"{path}: posteriors of {dataset}, a fixed-parameter set that is not among the test sets given"
        )
    indices = table["index"].to_numpy()
    mean = table[[f"{n}_mean" for n in LABEL_NAMES]].to_numpy(np.float64)
    variance = table[[f"{n}_std" for n in LABEL_NAMES]].to_numpy(np.float64) ** 2
    cov = np.einsum("ni,ij->nij", variance, np.eye(len(LABEL_NAMES)))
    truth = ds.label[indices]
    columns = {
        **{n: truth[:, k] for k, n in enumerate(LABEL_NAMES)},
        "snr": ds.snr[indices],
        "psf_fwhm": ds.psf_fwhm[indices],
    }
    entry = (f"posterior mean on {ds.spec.name}", ds, indices, mean, cov)
    return entry, BayesCells(ds, columns, variance)


def _prior_fits(path: Path, table: pd.DataFrame, manifest: dict):
    """Fits of a dataset drawn from a prior: (name, dataset, image indices, estimates, covariances
    from the inverse-Fisher errors). Fits of a fixed-parameter set that is not among the test sets
    given, of a missing dataset or of another draw of it are refused."""
    dataset = Path(manifest.get("dataset", ""))
    if not dataset.is_file():
        raise GalparamError(f"{path}: fits of {dataset}, which is neither among the test sets given nor on disk")
    ds = load_dataset(dataset, mmap=True)
    if manifest.get("dataset_spec_digest") not in (None, ds.spec.digest()):
        raise GalparamError(f"{path}: fits of another draw of {dataset} (its spec digest differs); fit it again")
    if len(ds) > 1 and not np.ptp(ds.label, axis=0).any():
        raise GalparamError(f"{path}: fits of {dataset}, a fixed-parameter set that is not among the test sets given")
    errors = [f"{n}_err" for n in LABEL_NAMES]
    cov = None
    if set(errors) <= set(table.columns):
        err = table[errors].to_numpy(dtype=np.float64)
        cov = np.einsum("ni,ij->nij", err**2, np.eye(len(LABEL_NAMES)))
    name = f"{estimator_name(manifest)} on {ds.spec.name}"
    return name, ds, table["index"].to_numpy(), table[list(LABEL_NAMES)].to_numpy(np.float64), cov


def _bayes_for(ds, bayes_cells) -> BayesCells | None:
    """The posteriors of images of ``ds``'s prior, if any were given."""
    return next((cells for cells in bayes_cells if same_prior(cells.dataset.spec, ds.spec)), None)


def _first(table: pd.DataFrame, column: str, value) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, column, value)
    return table


def _test_set_coverage(name: str, ts, predicted: pd.DataFrame, n: int, interval_scale=None) -> pd.DataFrame:
    truth = np.tile(ts.truth, (n, 1))
    std = predicted[[f"{label}_std" for label in LABEL_NAMES]].to_numpy()
    table = coverage(truth, predicted[list(LABEL_NAMES)].to_numpy(), std, interval_scale=interval_scale).reset_index()
    table.insert(0, "images", n)
    table["median std/crb"] = np.median(std, axis=0) / ts.bound
    return _first(table, "model", name)


def compute_report(*, runs=(), test_sets=(), fits=(), posteriors=(), n_images: int | None = None) -> Report:
    """The report of runs, test sets and fits: its tables and its figures' data (nothing written).

    Parameters
    ----------
    runs : sequence of path-like
        Finished ``galparam-train`` run folders.
    test_sets : sequence of path-like
        Fixed-parameter test sets (``test_snr60.npz``, ``test_snr30.npz``).
    fits : sequence of path-like
        ``galparam-evaluate baseline`` outputs (with or without ``--init``) on those test sets, or on
        a dataset drawn from a prior (``v2.npz``): those fits join the efficiency, shear and coverage
        tables (their inverse-Fisher errors as the spread) beside the networks' validation splits.
    posteriors : sequence of path-like
        ``galparam-evaluate posterior`` outputs on those test sets: the posterior mean joins the
        estimators, and the root of the mean posterior variance (the Bayes risk of images like
        these under the posterior's prior) joins the bound, with each estimator's RMSE over it.
    n_images : int, optional
        Networks are evaluated on the first ``n_images`` images of each test set (default all).

    Returns
    -------
    Report

    Raises
    ------
    GalparamError
        On a missing or invalid input, a test set whose parameters vary, fits of a dataset not
        given, or a model that does not take the test set's images.
    """
    if not (runs or fits or posteriors):
        raise GalparamError("nothing to report: give run folders, baseline fits and/or posteriors")
    sets = [load_test_set(p) for p in test_sets]
    by_path = {ts.path.resolve(): ts for ts in sets}
    if len({ts.snr for ts in sets}) != len(sets):
        raise GalparamError("two test sets share an SNR; give one per SNR")
    header = [provenance()]
    header += [f"test set {ts.path.name}: sha256 {sha256(ts.path)}" for ts in sets]

    estimates: dict = {ts.snr: {} for ts in sets}
    loaded, denoisers, coverage_rows = [], [], []
    for run_dir in map(Path, runs):
        run = RunFolder(run_dir)
        info = run.info()
        if info["family"] in DENOISERS:
            denoisers.append((run_dir, info, load_denoiser(run_dir)))
            header.append(
                f"denoiser {info['name']} ({run_dir.name}/{run.model_path.name}): sha256 {sha256(run.model_path)}"
            )
            continue
        estimator = load_estimator(run_dir)
        loaded.append((run_dir, info, estimator))
        model_file = run.model_path
        header.append(f"model {info['name']} ({run_dir.name}/{model_file.name}): sha256 {sha256(model_file)}")
        for ts in sets:
            n = len(ts.dataset) if n_images is None else min(n_images, len(ts.dataset))
            psf = ts.dataset.psf_images(slice(n)) if estimator.psf_input else None
            try:
                predicted = estimator.predict(ts.dataset.img[:n], psf)
            except GalparamError as exc:
                raise GalparamError(f"model {run_dir} does not fit test set {ts.path}: {exc}") from None
            estimates[ts.snr][info["name"]] = predicted[list(LABEL_NAMES)].to_numpy()
            if f"{LABEL_NAMES[0]}_std" in predicted:
                coverage_rows.append(
                    _test_set_coverage(info["name"], ts, predicted, n, estimator.interval_scale).assign(
                        snr_bin=f"test set SNR {ts.snr}"
                    )
                )
    prior_fits = []
    for path in map(Path, fits):
        table, manifest = read_fits(path)
        ts = by_path.get(Path(manifest.get("dataset", "")).resolve())
        unconverged = int((table["converged"] == 0).sum())
        if ts is None:
            prior_fits.append(_prior_fits(path, table, manifest))
            header.append(f"fits {path.name} ({prior_fits[-1][0]}): {len(table)} images, {unconverged} not converged")
            continue
        name = estimator_name(manifest)
        estimates[ts.snr][name] = table[list(LABEL_NAMES)].to_numpy()
        header.append(f"fits {path.name} ({name}, SNR {ts.snr}): {len(table)} images, {unconverged} not converged")
    bayes_risk, bayes_cells = {}, []
    for path in map(Path, posteriors):
        table, manifest = read_posteriors(path)
        ts = by_path.get(Path(manifest.get("dataset", "")).resolve())
        if ts is None:
            entry, cells = _prior_posteriors(path, table, manifest)
            prior_fits.append(entry)
            bayes_cells.append(cells)
            header.append(f"posteriors {path.name} ({entry[0]}): {len(table)} images, the Bayes risk of its prior")
            continue
        estimates[ts.snr]["posterior mean"] = table[[f"{n}_mean" for n in LABEL_NAMES]].to_numpy()
        variance = table[[f"{n}_std" for n in LABEL_NAMES]].to_numpy() ** 2
        bayes_risk[ts.snr] = np.sqrt(variance.mean(axis=0))
        methods = table["method"].value_counts().to_dict() if "method" in table else {}
        header.append(
            f"posteriors {path.name} (SNR {ts.snr}, prior of {manifest.get('prior_from', '?')}): {len(table)} images, "
            + ", ".join(f"{v} by {k}" for k, v in sorted(methods.items()))
        )
    for snr, by_name in estimates.items():
        for name, values in by_name.items():
            header.append(f"SNR {snr} {name}: first {len(values)} images")

    report = Report(
        bound_table(sets, estimates, bayes_risk), validation_table([(r, i) for r, i, _ in loaded]), header=header
    )
    report.test_sets = {ts.snr: ts for ts in sets}
    report.estimates = estimates
    restored = []
    for run_dir, info, denoiser in denoisers:
        sample = _validation_sample(run_dir, info, report, "denoising table and plots")
        if sample is None:
            continue
        ds, val = sample
        restored.append((info["name"], ds, val, denoiser.denoise(ds.img[val])))
        report.restored[info["name"]] = restored[-1][1:]
    report.denoising_table = denoising_table(restored)
    efficiency, shear = [], []
    uncertain = []
    for run_dir, info, estimator in loaded:
        name = info["name"]
        sample = _validation_sample(run_dir, info, report, "validation plots")
        if sample is None:
            continue
        ds, val = sample
        psf = ds.psf_images(val) if estimator.psf_input else None
        images = ds.img if info.get("images", "noisy") == "noisy" else ds.img_nonoise
        predicted, predicted_cov = estimator.predict_distribution(images[val], psf)
        truth = ds.label[val]
        bayes = _bayes_for(ds, bayes_cells)
        checks = validation_checks(name, ds, val, truth, predicted, predicted_cov, estimator.interval_scale, bayes)
        report.validated[name] = Validated(ds, val, truth, predicted, checks)
        efficiency.append(checks["efficiency"])
        shear.append(checks["shear"])
        if "coverage" in checks:
            coverage_rows.append(checks["coverage"])
            uncertain.append(name)
    for name, ds, indices, estimated, cov in prior_fits:
        checks = validation_checks(
            name, ds, indices, ds.label[indices], estimated, cov, bayes=_bayes_for(ds, bayes_cells)
        )
        report.validated[name] = Validated(ds, indices, ds.label[indices], estimated, checks)
        efficiency.append(checks["efficiency"])
        shear.append(checks["shear"])
        coverage_rows += [checks["coverage"]] if "coverage" in checks else []
    for attribute, parts in (
        ("efficiency_table", efficiency),
        ("shear_table", shear),
        ("coverage_table", coverage_rows),
    ):
        if parts:
            setattr(report, attribute, pd.concat(parts, ignore_index=True))
    networks = [info["name"] for _, info, _ in loaded]
    report.contents = Contents(
        test_sets=tuple(ts.snr for ts in sets),
        estimated_test_sets=tuple(snr for snr, by_name in estimates.items() if by_name),
        networks=tuple(networks),
        validated_networks=tuple(n for n in networks if n in report.validated),
        uncertainty_networks=tuple(uncertain),
        covered=bool(coverage_rows),
        denoisers=tuple(name for name, *_ in restored),
        prior_fits=tuple(name for name, *_ in prior_fits),
    )
    return report
