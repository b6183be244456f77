"""Result tables and plots a report can include as they are.

:func:`write_report` takes trained run folders, fixed-parameter test sets and baseline fits files,
and writes into one folder:

- ``test_sets.{csv,md,tex}``: for each test set (SNR 60, 30) and parameter, the Cramér–Rao bound,
  then the bias and standard deviation of each estimator (each network, the likelihood baseline,
  the likelihood fit started from a network's estimate).
- ``validation.{csv,md,tex}``: each model's validation RMSE and explained variance per parameter,
  on its own training dataset (from its ``metrics.json``), and its pipeline (the Xception alone, a
  denoiser then the Xception, or the two trained jointly).
- ``denoising.{csv,md,tex}``: for each denoiser run (EDSR, RDN), by SNR bin of its validation
  split, the residual RMS (counts), PSNR and SSIM of the noisy and the denoised images and the
  PSNR gain.
- ``efficiency.{csv,md,tex}``: each network's bias, spread and RMSE in units of each validation
  image's own Cramér–Rao bound, by quintiles of Sérsic index, radius, flux, SNR and PSF FWHM
  (heat maps in ``plots/efficiency_NAME.png``).
- ``shear.{csv,md,tex}``: each network's multiplicative and additive shear biases m and c with
  their standard errors, overall and by SNR bin, against LSST's requirement.
- ``coverage.{csv,md,tex}``: for networks with an uncertainty head, the coverage of their
  (calibrated) 68 % and 95 % intervals by SNR bin and on each test set, with the median predicted
  spread over the bound (below 1 claims more than any unbiased estimator can); reliability
  diagrams in ``plots/reliability_NAME.png``.
- ``plots/``: true vs predicted coloured by SNR and error vs true value (each model, its validation
  split), error histograms and bias and spread against the bound (each test set), reconstructions
  (noisy, noiseless, re-rendered from the estimate with :mod:`galparam.render`, residual), and for
  each denoiser its images (noisy, denoised, noiseless, denoised − noiseless).

Every table starts with a provenance header (galparam version, git commit, SHA-256 of each dataset
and model); numbers are printed with fixed formats, so the same inputs give byte-identical tables.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from galparam import __version__
from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.metrics import estimator_metrics
from galparam.evaluate.mle import FitBox
from galparam.io import atomic_path, write_text_atomic
from galparam.parameters import LABEL_NAMES, PARAMETERS
from galparam.render import shared_renderer
from galparam.runs import RunFolder

PLOT_SAMPLE = 2000  # validation images drawn in the scatter plots
TABLE_FORMAT = "{:.4g}"


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    folder: Path
    test_table: pd.DataFrame
    validation_table: pd.DataFrame
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    datasets_table: pd.DataFrame | None = None  # filled by galparam.study.Study.report
    denoising_table: pd.DataFrame | None = None
    efficiency_table: pd.DataFrame | None = None
    shear_table: pd.DataFrame | None = None
    coverage_table: pd.DataFrame | None = None
    search_tables: dict = field(default_factory=dict)


def sha256(path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    """The galparam source tree's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


# ----------------------------------------------------------------------------- inputs


@dataclass
class _TestSet:
    path: Path
    dataset: object
    snr: int
    truth: np.ndarray
    bound: np.ndarray


def _test_set(path) -> _TestSet:
    ds = load_dataset(path)
    if not (np.ptp(ds.label, axis=0) == 0).all() or np.ptp(ds.psf_fwhm) or np.ptp(ds.sigma):
        raise GalparamError(f"{path}: not a fixed-parameter test set (its labels, PSF or noise vary)")
    truth = ds.label[0].astype(np.float64)
    bound = cramer_rao(truth, float(ds.psf_fwhm[0]), float(ds.sigma[0]), poisson=ds.spec.poisson_noise)
    return _TestSet(Path(path), ds, int(round(float(np.median(ds.snr)))), truth, bound.std.to_numpy())


def _fits(path) -> tuple[pd.DataFrame, dict]:
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    try:
        fits = pd.read_csv(path)
        manifest = json.loads(sidecar.read_text())
    except FileNotFoundError as exc:
        raise GalparamError(f"{exc.filename}: no such file (fits come from galparam-evaluate baseline)") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise GalparamError(f"{path}: not a galparam fits file ({exc})") from None
    missing = [c for c in ("index", *LABEL_NAMES, "converged") if c not in fits.columns]
    if missing:
        raise GalparamError(f"{path}: not a galparam fits file (missing columns {', '.join(missing)})")
    return fits, manifest


def _estimator_name(manifest: dict) -> str:
    init = manifest.get("init", "")
    return "baseline" if init in ("adaptive moments", "") else f"refined {manifest.get('init_model', 'network')}"


# ----------------------------------------------------------------------------- tables


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else TABLE_FORMAT.format(float(value))
    return str(value)


def markdown_table(table: pd.DataFrame, header=()) -> str:
    """``table`` as a Markdown table with fixed number formats, ``header`` lines as HTML comments above it."""
    lines = [f"<!-- {h} -->" for h in header]
    cols = list(table.columns)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame, header: list[str], caption: str) -> str:
    def esc(text: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
            text = text.replace(a, b)
        return text

    cols = list(table.columns)
    lines = [f"% {h}" for h in header]
    lines += [r"\begin{table}", r"\centering", rf"\caption{{{esc(caption)}}}"]
    lines.append(r"\begin{tabular}{" + "l" * 2 + "r" * (len(cols) - 2) + "}")
    lines += [r"\hline", " & ".join(esc(c) for c in cols) + r" \\", r"\hline"]
    lines += [" & ".join(esc(_fmt(v)) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, stem: str, table: pd.DataFrame, header: list[str], caption: str) -> list[Path]:
    """Write ``table`` as ``STEM.csv``, ``STEM.md`` and ``STEM.tex`` in ``folder``, each opening with ``header``.

    The CSV's header lines start with ``#`` (read it back with ``pandas.read_csv(path, comment="#")``),
    Markdown's are HTML comments and LaTeX's ``%`` comments; numbers have fixed formats.

    Returns
    -------
    list of Path
        The three files.
    """
    csv_text = "".join(f"# {h}\n" for h in header) + table.to_csv(index=False, lineterminator="\n", float_format="%.6g")
    outputs = {
        folder / f"{stem}.csv": csv_text,
        folder / f"{stem}.md": markdown_table(table, header),
        folder / f"{stem}.tex": _latex(table, header, caption),
    }
    for path, text in outputs.items():
        write_text_atomic(path, text)
    return list(outputs)


def bound_table(test_sets, estimates: dict) -> pd.DataFrame:
    """Rows (SNR, parameter): the bound, then the bias and std of each estimator.

    Parameters
    ----------
    test_sets : list of _TestSet
        The loaded test sets, with their truth and bound.
    estimates : dict
        ``{snr: {estimator name: (N, 5) estimates of the first N images}}``.
    """
    rows = []
    for ts in sorted(test_sets, key=lambda t: -t.snr):
        metrics = {
            name: estimator_metrics(np.tile(ts.truth, (len(values), 1)), values, ts.bound)
            for name, values in estimates.get(ts.snr, {}).items()
        }
        for i, label in enumerate(LABEL_NAMES):
            row = {"SNR": ts.snr, "parameter": label, "CRB": ts.bound[i]}
            for name, m in metrics.items():
                row[f"{name} bias"] = m.loc[label, "bias"]
                row[f"{name} std"] = m.loc[label, "std"]
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
    from galparam.evaluate.restoration import restoration_by_snr

    tables = []
    for name, ds, val, denoised in denoisers:
        table = restoration_by_snr(ds.img[val], denoised, ds.img_nonoise[val], ds.snr[val])
        table.insert(0, "model", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


EFFICIENCY_BY = ("sersic_n", "hlr", "flux", "snr", "psf_fwhm")
"""What the efficiency maps bin by (each in quintiles of the validation split; a constant one is left out)."""


def _quantile_edges(values, bins: int = 5) -> np.ndarray:
    edges = np.unique(np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    return edges


def validation_checks(name: str, ds, val, truth, predicted, predicted_cov=None, interval_scale=None) -> dict:
    """A network's validation split measured against each image's own bound.

    ``predicted`` are its estimates (N, 5), ``predicted_cov`` their calibrated covariances
    (N, 5, 5; None without an uncertainty head) and ``interval_scale`` the run's per-level
    interval calibration (:attr:`galparam.estimator.Estimator.interval_scale`), which the
    coverage of the 68 % and 95 % intervals uses where it is given.

    Returns
    -------
    dict of DataFrame
        ``efficiency`` (:func:`~galparam.evaluate.uncertainty.efficiency_map` by each of
        :data:`EFFICIENCY_BY`), ``shear`` (m and c by SNR bin) and, for a run with an uncertainty
        head, ``coverage`` (by SNR bin, with the median predicted spread over the bound) and
        ``reliability``; each table's first column is the model.
    """
    from galparam.evaluate.crb import batch_bounds
    from galparam.evaluate.uncertainty import coverage_table, efficiency_map, reliability, shear_table
    from galparam.render import renderer_for

    spec = ds.spec
    renderer = renderer_for("kspace", spec.stamp_size, spec.pixel_scale, spec.psf_beta)
    cov = batch_bounds(truth, ds.psf_fwhm[val], ds.sigma[val], poisson=spec.poisson_noise, renderer=renderer)
    bound = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    columns = {**{n: truth[:, k] for k, n in enumerate(LABEL_NAMES)}, "snr": ds.snr[val], "psf_fwhm": ds.psf_fwhm[val]}
    std = None if predicted_cov is None else np.sqrt(np.diagonal(predicted_cov, axis1=1, axis2=2))
    maps = []
    for by in EFFICIENCY_BY:
        edges = _quantile_edges(columns[by])
        if len(edges) > 2:
            maps.append(
                efficiency_map(truth, predicted, bound, columns[by], edges, name="bin", spread=std).assign(by=by)
            )
    efficiency_columns = ["model", "by", "bin", "parameter", "images", "bias/crb", "std/crb", "rmse/crb"]
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


def _validation_sample(run_dir, info: dict, report: Report, what: str):
    """A run's dataset and the first :data:`PLOT_SAMPLE` of its validation indices, or None (and
    a note that ``what`` was skipped) where its dataset is gone."""
    data_path = Path(info["dataset"]["path"])
    if not data_path.exists():
        report.notes.append(f"{info['name']}: {what} skipped, its dataset {data_path} is gone")
        return None
    return load_dataset(data_path, mmap=True), RunFolder(run_dir).validation_indices(info)[:PLOT_SAMPLE]


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
    name = f"{_estimator_name(manifest)} on {ds.spec.name}"
    return name, ds, table["index"].to_numpy(), table[list(LABEL_NAMES)].to_numpy(np.float64), cov


def name_slug(name: str) -> str:
    """A file-name part of an estimator's name (``refined x on v2-small`` → ``refined-x-on-v2-small``)."""
    return "-".join(name.split())


def _first(table: pd.DataFrame, column: str, value) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, column, value)
    return table


def _test_set_coverage(name: str, ts, predicted: pd.DataFrame, n: int, interval_scale=None) -> pd.DataFrame:
    from galparam.evaluate.uncertainty import coverage

    truth = np.tile(ts.truth, (n, 1))
    std = predicted[[f"{label}_std" for label in LABEL_NAMES]].to_numpy()
    table = coverage(truth, predicted[list(LABEL_NAMES)].to_numpy(), std, interval_scale=interval_scale).reset_index()
    table.insert(0, "images", n)
    table["median std/crb"] = np.median(std, axis=0) / ts.bound
    return _first(table, "model", name)


# ----------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _units(label: str) -> str:
    unit = PARAMETERS[label].unit
    return f" [{unit}]" if unit else ""


def plot_true_vs_predicted(truth, predicted, snr, title: str, path: Path) -> Path:
    """Five panels: estimate against truth, points coloured by SNR."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), constrained_layout=True)
    for i, (ax, label) in enumerate(zip(axes, LABEL_NAMES, strict=True)):
        points = ax.scatter(truth[:, i], predicted[:, i], c=snr, s=4, cmap="viridis", vmin=10, vmax=100)
        low, high = truth[:, i].min(), truth[:, i].max()
        ax.plot([low, high], [low, high], color="k", lw=0.8)
        ax.set(xlabel=f"true {label}{_units(label)}", ylabel=f"estimated {label}")
    fig.colorbar(points, ax=axes, label="SNR")
    fig.suptitle(title)
    return _save(fig, path)


def plot_error_vs_true(truth, predicted, title: str, path: Path) -> Path:
    """Five panels: error (estimate − truth) against the true value."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4), constrained_layout=True)
    for i, (ax, label) in enumerate(zip(axes, LABEL_NAMES, strict=True)):
        ax.scatter(truth[:, i], predicted[:, i] - truth[:, i], s=3, alpha=0.5)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel=f"true {label}{_units(label)}", ylabel=f"error in {label}")
    fig.suptitle(title)
    return _save(fig, path)


def plot_error_histograms(ts: _TestSet, estimates: dict, path: Path) -> Path:
    """Per parameter, each estimator's error histogram with the bound's Gaussian N(0, CRB²)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4), constrained_layout=True)
    for i, (ax, label) in enumerate(zip(axes, LABEL_NAMES, strict=True)):
        crb = ts.bound[i]
        edges = np.linspace(-5 * crb, 5 * crb, 41)
        for name, values in estimates.items():
            ax.hist(
                np.clip(values[:, i] - ts.truth[i], edges[0], edges[-1]),
                edges,
                density=True,
                histtype="step",
                label=name,
            )
        x = np.linspace(edges[0], edges[-1], 200)
        ax.plot(x, np.exp(-0.5 * (x / crb) ** 2) / (crb * np.sqrt(2 * np.pi)), "k--", lw=1, label="N(0, CRB²)")
        ax.set(xlabel=f"error in {label}{_units(label)}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Errors on the SNR {ts.snr} test set (clipped to ±5 CRB)")
    return _save(fig, path)


def plot_bias_spread(ts: _TestSet, estimates: dict, path: Path) -> Path:
    """Bias / CRB and std / CRB per parameter and estimator (1 is the bound)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    x = np.arange(len(LABEL_NAMES))
    width = 0.8 / max(len(estimates), 1)
    for k, (name, values) in enumerate(estimates.items()):
        m = estimator_metrics(np.tile(ts.truth, (len(values), 1)), values, ts.bound)
        axes[0].bar(x + k * width, m["bias/crb"], width, label=name)
        axes[1].bar(x + k * width, m["std/crb"], width, label=name)
    for ax, what in zip(axes, ("bias / CRB", "std / CRB"), strict=True):
        ax.axhline(1 if what.startswith("std") else 0, color="k", lw=0.8)
        ax.set_xticks(x + 0.4 - width / 2, LABEL_NAMES)
        ax.set_ylabel(what)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Bias and spread against the Cramér–Rao bound, SNR {ts.snr}")
    return _save(fig, path)


def plot_reconstructions(dataset, indices, estimated, title: str, path: Path) -> Path:
    """Rows of images: noisy, noiseless, re-rendered from the estimate, residual (noisy − re-rendered)."""
    import matplotlib.pyplot as plt

    spec = dataset.spec
    renderer = shared_renderer(spec.stamp_size, spec.pixel_scale, spec.psf_beta)
    box = FitBox.from_spec(spec)  # a network's estimate may stray outside what can be drawn
    fig, axes = plt.subplots(len(indices), 4, figsize=(9, 2.3 * len(indices)), constrained_layout=True, squeeze=False)
    for row, (i, theta) in enumerate(zip(indices, estimated, strict=True)):
        theta = box.to_theta(box.to_variables(np.asarray(theta, dtype=np.float64)))
        rendered = renderer.image(*theta, float(dataset.psf_fwhm[i]), dtype=np.float64)
        panels = (dataset.img[i], dataset.img_nonoise[i], rendered, dataset.img[i] - rendered)
        for ax, image, name in zip(axes[row], panels, ("noisy", "noiseless", "re-rendered", "residual"), strict=True):
            ax.imshow(image, origin="lower", cmap="gray" if name != "residual" else "RdBu_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
    fig.suptitle(title)
    return _save(fig, path)


def plot_denoising(noisy, denoised, clean, title: str, path: Path) -> Path:
    """:func:`galparam.plots.denoising_panels`, written to ``path``."""
    from galparam.plots import denoising_panels

    fig = denoising_panels(noisy, denoised, clean)
    fig.suptitle(title)
    return _save(fig, path)


def plot_efficiency(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Heat maps of RMSE / bound: one panel per binned variable, parameters × bins."""
    import matplotlib.pyplot as plt

    groups = list(table.groupby("by", sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), constrained_layout=True, squeeze=False)
    for ax, (by, part) in zip(axes[0], groups, strict=True):
        grid = part.pivot(index="parameter", columns="bin", values="rmse/crb").reindex(list(LABEL_NAMES))
        grid = grid[list(dict.fromkeys(part["bin"]))]
        image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=1.0, aspect="auto")
        ax.set_yticks(range(len(LABEL_NAMES)), LABEL_NAMES)
        starts = [f"{float(b.split(',')[0].strip('[')):.3g}" for b in grid.columns]
        ax.set_xticks(range(grid.shape[1]), starts, rotation=60, fontsize=7)
        ax.set_xlabel(f"{by} (bin start)")
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=axes[0, -1], label="RMSE / CRB")
    fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(table: pd.DataFrame, title: str, path: Path) -> Path:
    """The reliability diagram: observed against nominal coverage of central intervals, per parameter."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, label="calibrated")
    for label in LABEL_NAMES:
        ax.plot(table["level"], table[label], marker=".", label=label)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- the report


def write_report(output, *, runs=(), test_sets=(), fits=(), n_images: int | None = None) -> Report:
    """Write the tables and plots (see the module docstring).

    Parameters
    ----------
    output : path-like
        The report folder.
    runs : sequence of path-like
        Finished ``galparam-train`` run folders.
    test_sets : sequence of path-like
        Fixed-parameter test sets (``test_snr60.npz``, ``test_snr30.npz``).
    fits : sequence of path-like
        ``galparam-evaluate baseline`` outputs (with or without ``--init``) on those test sets, or on
        a dataset drawn from a prior (``v2.npz``): those fits join the efficiency, shear and coverage
        tables (their inverse-Fisher errors as the spread) beside the networks' validation splits.
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
    import matplotlib

    matplotlib.use("Agg")
    from galparam.estimator import load_denoiser, load_estimator
    from galparam.specs import DENOISER_FAMILIES

    if not (runs or fits):
        raise GalparamError("nothing to report: give run folders and/or baseline fits")
    folder = Path(output)
    sets = [_test_set(p) for p in test_sets]
    by_path = {ts.path.resolve(): ts for ts in sets}
    if len({ts.snr for ts in sets}) != len(sets):
        raise GalparamError("two test sets share an SNR; give one per SNR")
    header = [f"galparam {__version__}, git commit {git_commit()}"]
    header += [f"test set {ts.path.name}: sha256 {sha256(ts.path)}" for ts in sets]

    estimates: dict = {ts.snr: {} for ts in sets}
    loaded, denoisers, coverage_rows = [], [], []
    for run_dir in map(Path, runs):
        run = RunFolder(run_dir)
        info = run.info()
        if info["family"] in DENOISER_FAMILIES:
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
        table, manifest = _fits(path)
        ts = by_path.get(Path(manifest.get("dataset", "")).resolve())
        unconverged = int((table["converged"] == 0).sum())
        if ts is None:
            prior_fits.append(_prior_fits(path, table, manifest))
            header.append(f"fits {path.name} ({prior_fits[-1][0]}): {len(table)} images, {unconverged} not converged")
            continue
        name = _estimator_name(manifest)
        estimates[ts.snr][name] = table[list(LABEL_NAMES)].to_numpy()
        header.append(f"fits {path.name} ({name}, SNR {ts.snr}): {len(table)} images, {unconverged} not converged")
    for snr, by_name in estimates.items():
        for name, values in by_name.items():
            header.append(f"SNR {snr} {name}: first {len(values)} images")

    report = Report(folder, bound_table(sets, estimates), validation_table([(r, i) for r, i, _ in loaded]))
    restored = []
    for run_dir, info, denoiser in denoisers:
        sample = _validation_sample(run_dir, info, report, "denoising table and plots")
        if sample is None:
            continue
        ds, val = sample
        restored.append((info["name"], ds, val, denoiser.denoise(ds.img[val])))
    report.denoising_table = denoising_table(restored)
    folder.mkdir(parents=True, exist_ok=True)
    if sets:
        report.files += write_tables(
            folder, "test_sets", report.test_table, header, "Bias and standard deviation against the Cramér–Rao bound"
        )
    if loaded:
        report.files += write_tables(
            folder, "validation", report.validation_table, header, "Validation RMSE and explained variance (EV)"
        )
    if restored:
        report.files += write_tables(
            folder,
            "denoising",
            report.denoising_table,
            header,
            "Denoising by SNR bin: residual RMS (counts), PSNR (dB) and SSIM of noisy and denoised images",
        )

    plots = folder / "plots"
    for ts in sets:
        if estimates[ts.snr]:
            report.files.append(plot_error_histograms(ts, estimates[ts.snr], plots / f"errors_snr{ts.snr}.png"))
            report.files.append(plot_bias_spread(ts, estimates[ts.snr], plots / f"bias_spread_snr{ts.snr}.png"))
    for name, ds, val, denoised in restored:
        shown = val[:4]
        report.files.append(
            plot_denoising(
                ds.img[shown],
                denoised[:4],
                ds.img_nonoise[shown],
                f"{name} on the {ds.spec.name} validation split",
                plots / f"denoising_{name}.png",
            )
        )
    efficiency, shear = [], []
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
        title = f"{name} on the {ds.spec.name} validation split"
        report.files.append(
            plot_true_vs_predicted(truth, predicted, ds.snr[val], title, plots / f"true_vs_predicted_{name}.png")
        )
        report.files.append(plot_error_vs_true(truth, predicted, title, plots / f"error_vs_true_{name}.png"))
        report.files.append(
            plot_reconstructions(
                ds, val[:4], predicted[:4], f"{name}: reconstructions", plots / f"reconstructions_{name}.png"
            )
        )
        checks = validation_checks(name, ds, val, truth, predicted, predicted_cov, estimator.interval_scale)
        efficiency.append(checks["efficiency"])
        shear.append(checks["shear"])
        report.files.append(
            plot_efficiency(
                checks["efficiency"], f"{name}: RMSE / each image's bound", plots / f"efficiency_{name}.png"
            )
        )
        if "coverage" in checks:
            coverage_rows.append(checks["coverage"])
            report.files.append(
                plot_reliability(checks["reliability"], f"{name}: reliability", plots / f"reliability_{name}.png")
            )
    for name, ds, indices, estimated, cov in prior_fits:
        checks = validation_checks(name, ds, indices, ds.label[indices], estimated, cov)
        efficiency.append(checks["efficiency"])
        shear.append(checks["shear"])
        coverage_rows += [checks["coverage"]] if "coverage" in checks else []
        report.files.append(
            plot_efficiency(
                checks["efficiency"], f"{name}: RMSE / each image's bound", plots / f"efficiency_{name_slug(name)}.png"
            )
        )
    captions = {
        "efficiency": "Bias, spread and RMSE in units of each image's own Cramér–Rao bound, by bins "
        "(networks: their validation split; fits: the images fitted)",
        "shear": "Shear calibration g_est = (1 + m) g_true + c (networks: their validation split; fits: the images "
        "fitted), against LSST's |m| < 1e-3, |c| < 1e-4",
        "coverage": "Coverage of the calibrated 68 % and 95 % intervals (fits: their inverse-Fisher errors), "
        "and the predicted spread over the bound",
    }
    for stem, parts in (("efficiency", efficiency), ("shear", shear), ("coverage", coverage_rows)):
        if parts:
            table = pd.concat(parts, ignore_index=True)
            setattr(report, f"{stem}_table", table)
            report.files += write_tables(folder, stem, table, header, captions[stem])
    return report
