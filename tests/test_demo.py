"""``make demo`` end to end on its own small settings, its report, and the four notebooks.

The demo runs once (about 3 minutes on 2 cores) into a temporary folder; the notebooks are then
executed with papermill at their ``small`` setting against the demo's folder, as a user running
them after ``make demo`` would: they reuse the demo's datasets, runs and fits (every step resumes)
and run what the demo does not (the KerasTuner and AutoKeras searches, the network-started fits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from galparam.data import load_dataset
from galparam.demo import DEMO_EXPERIMENTS, prior_fit_names, report_contents
from galparam.parameters import LABEL_NAMES
from galparam.report import layout
from galparam.study import BASELINE_IMAGES, Study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Run ``python -m galparam.demo`` as ``make demo`` does, into a temporary folder."""
    base = tmp_path_factory.mktemp("demo")
    out, reports = base / "out", base / "reports"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "galparam.demo",
            "--output",
            str(out),
            "--reports",
            str(reports),
            "--project",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=base,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "reports": reports, "stdout": proc.stdout, "stderr": proc.stderr}


def _table(path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


@pytest.mark.slow
def test_demo_prints_progress_and_the_headline_table(demo):
    steps = 5 + len(DEMO_EXPERIMENTS)
    for i in range(1, steps + 1):
        assert f"[{i}/{steps}]" in demo["stderr"]
    out = demo["stdout"]
    assert f"Bias and spread on the first {BASELINE_IMAGES['small']} images" in out
    for name in ("xception-v2-small bias", "autoencoder-v2-small std", "baseline bias", "CRB"):
        assert name in out
    assert "the demo took" in out
    assert "Coverage of the predicted intervals" in out and "xception-v2-uncertainty-small" in out
    assert "Shear calibration on the validation splits" in out


@pytest.mark.slow
def test_demo_measures_the_shipped_real_galaxies(demo):
    """Step 8: the SDSS and HST cutouts of data/real, each galaxy converged, with its residual panel."""
    from astropy.table import Table

    from galparam.demo import REAL_CATALOGS
    from galparam.measure.residuals import safe_name

    real = demo["out"] / "real"
    counts = {"sdss": 3, "hst": 5}
    for name in REAL_CATALOGS:
        table = Table.read(real / f"{name}.ecsv")
        assert len(table) == counts[name] and table["converged"].all()
        for galaxy in table["name"]:
            assert (real / "residuals" / f"{safe_name(galaxy)}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "Real galaxies, sdss" in demo["stdout"] and "J162123.19+322056.4" in demo["stdout"]


@pytest.mark.slow
def test_demo_report_holds_every_promised_file(demo):
    """The report's layout (galparam.report.layout), given what the demo makes, names every file;
    the demo's report holds exactly those."""
    promised = layout.files(demo["reports"], report_contents(Study("small", output=demo["out"], project=ROOT)))
    assert {p for p in demo["reports"].rglob("*") if p.is_file()} == set(promised)
    for path in promised:  # the tables' contents and formats: test_report.py
        assert path.is_file() and path.stat().st_size > 0, path
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_SIGNATURE, path
            import matplotlib.image

            height, width, _ = matplotlib.image.imread(path).shape
            assert height > 200 and width > 200, path


@pytest.mark.slow
def test_demo_test_set_table_covers_both_sets_and_every_estimator(demo):
    """What the demo adds to test_report.py's checks of the numbers: its fits, networks and sets are all there."""
    table = _table(demo["reports"] / "test_sets.csv")
    assert sorted(set(table.SNR)) == [30, 60] and len(table) == 2 * len(LABEL_NAMES)
    for snr in (60, 30):
        fits = pd.read_csv(demo["out"] / "fits" / f"baseline-snr{snr}.csv")
        assert len(fits) == BASELINE_IMAGES["small"] and fits.converged.all()
    for name in ("baseline", "posterior mean", *(f"{e}-small" for e in DEMO_EXPERIMENTS)):
        assert table[[f"{name} bias", f"{name} std", f"{name} rmse/√MMSE"]].notna().all().all(), name
    assert (table["√MMSE"] > 0).all()
    assert (table["CRB"] > 0).all()


@pytest.mark.slow
def test_demo_report_measures_uncertainty_shear_and_efficiency(demo):
    fits = prior_fit_names()
    coverage = _table(demo["reports"] / "coverage.csv")
    assert set(coverage.model) == {"xception-v2-uncertainty-small", *fits}
    network = coverage[coverage.model == "xception-v2-uncertainty-small"]
    assert {"test set SNR 60", "test set SNR 30", "all"} <= set(network.snr_bin)
    assert coverage[["coverage_68", "coverage_95"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (coverage["median std/crb"] > 0).all()
    # the fit's inverse-Fisher errors are the bound at its estimate: near one of the bound at the truth
    fit_spread = coverage[(coverage.model == fits[0]) & (coverage.snr_bin == "all")]["median std/crb"]
    assert fit_spread.between(0.5, 2).all(), fit_spread
    shear = _table(demo["reports"] / "shear.csv")
    assert set(shear.component) == {"g1", "g2"} and (shear.m_err > 0).all()
    assert set(shear.model) == {*(f"{e}-small" for e in DEMO_EXPERIMENTS), *fits}
    efficiency = _table(demo["reports"] / "efficiency.csv")
    assert {"sersic_n", "hlr", "flux", "snr"} <= set(efficiency["by"]) and (efficiency["rms err/crb"] > 0).all()
    assert set(efficiency.model) == {*(f"{e}-small" for e in DEMO_EXPERIMENTS), *fits}
    # every estimator's cells against the Bayes risk as well as the bound (posteriors of v2-small)
    ratio = efficiency["rms err/√MMSE"]
    assert (
        ratio[efficiency.model == fits[-1]].notna().all() and ratio.notna().mean() > 0.9 and (ratio.dropna() > 0).all()
    )


@pytest.mark.slow
def test_demo_dataset_and_search_tables_match_their_files(demo):
    datasets = _table(demo["reports"] / "datasets.csv").set_index("dataset")
    assert sorted(datasets.index) == sorted(f"{b}-small" for b in ("v1", "v2", "v3", "test_snr60", "test_snr30"))
    for name in datasets.index:
        ds = load_dataset(demo["out"] / "data" / f"{name}.npz")
        assert datasets.loc[name, "images"] == len(ds)
        assert datasets.loc[name, "SNR max"] == pytest.approx(float(ds.snr.max()), rel=1e-5)
        rejected = 1 - len(ds) / ds.extra["draws"].sum()
        assert datasets.loc[name, "rejection rate"] == pytest.approx(rejected, rel=1e-5, abs=1e-9)
    search = _table(demo["reports"] / "search_grid-v1-small.csv")
    trials = [json.loads(p.read_text()) for p in (demo["out"] / "search" / "grid-v1-small").glob("trial-*.json")]
    assert len(search) == len(trials) == 4
    assert sorted(search.val_loss) == pytest.approx(sorted(t["val_loss"] for t in trials), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_the_small_setting(notebook, demo, tmp_path, monkeypatch):
    import papermill

    # importing streamlit (the explorer's tests, in this process under pytest-xdist) sets MPLBACKEND=Agg,
    # which the kernel would inherit: plt.show() would then draw nothing inline
    monkeypatch.delenv("MPLBACKEND", raising=False)

    executed = tmp_path / notebook.name
    papermill.execute_notebook(
        str(notebook),
        str(executed),
        parameters={"output": str(demo["out"]), "project": str(ROOT)},
        cwd=str(notebook.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    outputs = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook shows no figure"
    if notebook.stem == "02_search":
        for name in ("tune-v1-small", "autokeras-v1-small"):
            assert (demo["out"] / "search" / name).is_dir()
        assert any("text/html" in o.get("data", {}) for o in outputs)  # the HiPlot dashboard
    if notebook.stem == "04_evaluation":
        report = demo["out"] / "report"
        table = _table(report / "test_sets.csv")
        assert "refined xception-v2-small bias" in table.columns
        assert (report / "plots" / "bias_spread_snr60.png").is_file()


def test_notebooks_are_committed_without_outputs():
    import nbformat

    assert [p.stem for p in NOTEBOOKS] == ["01_datasets", "02_search", "03_training", "04_evaluation"]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        code = [c for c in book.cells if c.cell_type == "code"]
        assert code[0].metadata.get("tags") == ["parameters"], path
        assert 'setting = "small"' in code[0].source
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path} holds outputs"
