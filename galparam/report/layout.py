"""The report's files, declared once: which tables and figures a report of given contents holds.

The writer (:func:`galparam.report.write_report`, and :meth:`galparam.study.Study.report` for the
datasets and search tables) writes exactly :func:`files` of what it computed; the demo and its
test read the same declaration to know what the demo's report holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from galparam.report import figures
from galparam.tables import TABLE_FORMATS

PLOTS = "plots"
"""The report's subfolder of figures."""


@dataclass(frozen=True)
class Contents:
    """What a report holds, by kind: the keys its files are named by.

    Attributes
    ----------
    test_sets : tuple of int
        The SNRs of the fixed-parameter test sets given.
    estimated_test_sets : tuple of int
        Those some estimator was measured on (their figures).
    networks : tuple of str
        The networks loaded (the validation table).
    validated_networks : tuple of str
        The networks measured on their validation split (their figures, efficiency and shear rows).
    uncertainty_networks : tuple of str
        The validated networks with an uncertainty head (their reliability diagrams).
    covered : bool
        Some estimator gave spreads (the coverage table).
    denoisers : tuple of str
        The denoisers measured on their validation split.
    prior_fits : tuple of str
        The fits of datasets drawn from a prior (their efficiency maps).
    searches : tuple of str
        The searches whose trials are tabulated (a study's report).
    datasets : bool
        The datasets table (a study's report).
    """

    test_sets: tuple = ()
    estimated_test_sets: tuple = ()
    networks: tuple = ()
    validated_networks: tuple = ()
    uncertainty_networks: tuple = ()
    covered: bool = False
    denoisers: tuple = ()
    prior_fits: tuple = ()
    searches: tuple = ()
    datasets: bool = False


@dataclass(frozen=True)
class TableFile:
    """A table of the report: ``STEM.csv``, ``STEM.md``, ``STEM.tex``.

    Attributes
    ----------
    stem : str
        The file name without suffix (``{key}`` in it: one table per item of ``per``).
    attribute : str
        The :class:`~galparam.report.content.Report` attribute that holds it.
    caption : str
        The LaTeX caption.
    present_with : tuple of str
        The :class:`Contents` fields of which any non-empty one gives it rows.
    per : str, optional
        One table per item of this :class:`Contents` field.
    """

    stem: str
    attribute: str
    caption: str
    present_with: tuple
    per: str | None = None


@dataclass(frozen=True)
class FigureFile:
    """A figure of the report, ``plots/PATTERN`` for each item of a :class:`Contents` field, drawn
    by ``draw(report, key, path)`` (:mod:`galparam.report.figures`)."""

    pattern: str
    per: str
    draw: Callable


TABLES = (
    TableFile("test_sets", "test_table", "Bias and standard deviation against the Cramér–Rao bound", ("test_sets",)),
    TableFile("validation", "validation_table", "Validation RMSE and explained variance (EV)", ("networks",)),
    TableFile(
        "denoising",
        "denoising_table",
        "Denoising by SNR bin: residual RMS (counts), PSNR (dB) and SSIM of noisy and denoised images",
        ("denoisers",),
    ),
    TableFile(
        "efficiency",
        "efficiency_table",
        "Bias, spread and RMSE in units of each image's own Cramér–Rao bound, by bins "
        "(networks: their validation split; fits: the images fitted)",
        ("validated_networks", "prior_fits"),
    ),
    TableFile(
        "shear",
        "shear_table",
        "Shear calibration g_est = (1 + m) g_true + c (networks: their validation split; fits: the images "
        "fitted), against LSST's |m| < 1e-3, |c| < 1e-4",
        ("validated_networks", "prior_fits"),
    ),
    TableFile(
        "coverage",
        "coverage_table",
        "Coverage of the calibrated 68 % and 95 % intervals (fits: their inverse-Fisher errors), "
        "and the predicted spread over the bound",
        ("covered",),
    ),
    TableFile("datasets", "datasets_table", "The simulated datasets", ("datasets",)),
    TableFile("search_{key}", "search_tables", "Trials of search_{key}", ("searches",), per="searches"),
)
"""Every table a report may hold, in the order it is written."""

FIGURES = (
    FigureFile("errors_snr{key}.png", "estimated_test_sets", figures.errors),
    FigureFile("bias_spread_snr{key}.png", "estimated_test_sets", figures.bias_spread),
    FigureFile("denoising_{key}.png", "denoisers", figures.denoising),
    FigureFile("true_vs_predicted_{key}.png", "validated_networks", figures.true_vs_predicted),
    FigureFile("error_vs_true_{key}.png", "validated_networks", figures.error_vs_true),
    FigureFile("reconstructions_{key}.png", "validated_networks", figures.reconstructions),
    FigureFile("efficiency_{key}.png", "validated_networks", figures.efficiency),
    FigureFile("reliability_{key}.png", "uncertainty_networks", figures.reliability),
    FigureFile("efficiency_{key}.png", "prior_fits", figures.efficiency),
    FigureFile("search_{key}.png", "searches", figures.search),
)
"""Every figure a report may hold."""


def slug(name) -> str:
    """A file-name part of a key (``refined x on v2-small`` → ``refined-x-on-v2-small``)."""
    return "-".join(str(name).split())


def table_stems(contents: Contents) -> list[str]:
    """The stems of the tables a report of ``contents`` holds, in :data:`TABLES`' order."""
    stems = []
    for table in TABLES:
        if any(getattr(contents, field) for field in table.present_with):
            keys = getattr(contents, table.per) if table.per else (None,)
            stems += [table.stem.format(key=slug(key)) for key in keys]
    return stems


def figure_path(folder, figure: FigureFile, key) -> Path:
    """Where figure ``figure`` of item ``key`` goes."""
    return Path(folder) / PLOTS / figure.pattern.format(key=slug(key))


def files(folder, contents: Contents) -> list[Path]:
    """Every table and figure a report of ``contents`` in ``folder`` holds."""
    folder = Path(folder)
    out = [folder / f"{stem}.{ext}" for stem in table_stems(contents) for ext in TABLE_FORMATS]
    for figure in FIGURES:
        out += [figure_path(folder, figure, key) for key in getattr(contents, figure.per)]
    return out
