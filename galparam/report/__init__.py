"""Reports: result tables (CSV, Markdown, LaTeX) with provenance, and figures, from runs, test
sets and fits.

:func:`compute_report` computes what a report holds (:mod:`galparam.report.content`: tables and
what the figures draw) and writes nothing; :func:`write` writes a computed report, file by file as
:mod:`galparam.report.layout` declares them; :func:`write_report` does both.
"""

from __future__ import annotations

from pathlib import Path

from galparam.report import layout
from galparam.report.content import Report, compute_report
from galparam.tables import write_tables

__all__ = ["Report", "compute_report", "write", "write_report"]


def write(report: Report, folder) -> Report:
    """Write a computed report into ``folder``: its tables and figures as :mod:`~galparam.report.layout`
    declares them for its :attr:`~galparam.report.content.Report.contents`; ``report.files`` lists them."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report.folder = folder
    contents = report.contents
    for table in layout.TABLES:
        if not any(getattr(contents, field) for field in table.present_with):
            continue
        value = getattr(report, table.attribute)
        items = [(key, value[key]) for key in getattr(contents, table.per)] if table.per else [(None, value)]
        for key, frame in items:
            stem = table.stem.format(key=layout.slug(key))
            caption = table.caption.format(key=layout.slug(key))
            write_tables(folder, stem, frame, report.headers.get(stem, report.header), caption)
    for figure in layout.FIGURES:
        for key in getattr(contents, figure.per):
            figure.draw(report, key, layout.figure_path(folder, figure, key))
    report.files = layout.files(folder, contents)
    return report


def write_report(output, *, runs=(), test_sets=(), fits=(), posteriors=(), n_images: int | None = None) -> Report:
    """Compute the report of runs, test sets and fits (:func:`compute_report`, whose arguments these
    are) and write it into the folder ``output``.

    Parameters
    ----------
    output : path-like
        The report folder.
    runs, test_sets, fits, posteriors : sequence of path-like
        As :func:`compute_report`.
    n_images : int, optional
        As :func:`compute_report`.

    Returns
    -------
    Report

    Raises
    ------
    GalparamError
        As :func:`compute_report`.
    """
    return write(
        compute_report(runs=runs, test_sets=test_sets, fits=fits, posteriors=posteriors, n_images=n_images), output
    )
