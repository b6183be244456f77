"""Result tables as files a report or a paper takes as they are: CSV, Markdown and LaTeX, with a
provenance header, numbers in fixed formats (the same inputs give byte-identical tables)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from galparam import __version__
from galparam.io import write_text_atomic

TABLE_FORMAT = "{:.4g}"
"""How a table prints a number (Markdown and LaTeX; CSV keeps six significant digits)."""

TABLE_FORMATS = ("csv", "md", "tex")
"""The files :func:`write_tables` writes for a table."""


def sha256(path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    """The galparam source tree's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[1]
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


def provenance() -> str:
    """The first header line of every table: galparam's version and the source tree's commit."""
    return f"galparam {__version__}, git commit {git_commit()}"


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


def latex_table(table: pd.DataFrame, header: list[str], caption: str) -> str:
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
    """Write ``table`` as ``STEM.csv``, ``STEM.md`` and ``STEM.tex`` (:data:`TABLE_FORMATS`) in
    ``folder``, each opening with ``header``.

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
        folder / f"{stem}.tex": latex_table(table, header, caption),
    }
    for path, text in outputs.items():
        write_text_atomic(path, text)
    return list(outputs)
