"""Reports: tables in three formats with provenance, byte-identical across runs; the refined fit (--init)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_spec

from galparam.cli.common import run
from galparam.cli.evaluate import main as evaluate_main
from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.metrics import estimator_metrics
from galparam.posteriors import run_posterior
from galparam.report import write_report
from galparam.runs import RunFolder
from galparam.simulate import simulate

TEST_GALAXY = {
    "flux": {"fixed": 1.0e5},
    "sersic_n": {"fixed": 1.5},
    "hlr": {"fixed": 0.3},
    "shear_amplitude": None,
    "shear_angle": None,
    "g1": {"fixed": -0.069},
    "g2": {"fixed": 0.15},
    "psf_fwhm": {"fixed": 0.5},
}


@pytest.fixture(scope="module")
def setting(tiny_run, tmp_path_factory):
    """The shared tiny model, two 12-image test sets, and baseline, refined and model-free fits."""
    folder = tmp_path_factory.mktemp("report")
    run_dir = tiny_run
    tests = {}
    for snr, sigma in ((60, 200), (30, 400)):
        priors = {**TEST_GALAXY, "sigma": {"fixed": sigma}}
        test_spec = make_spec(
            name=f"t{snr}", size=12, seed=snr, validation_fraction=0.0, snr_window=None, priors=priors
        )
        simulate(test_spec, folder / f"t{snr}.npz", progress=False)
        tests[snr] = folder / f"t{snr}.npz"
    fits = {}
    for name, snr, extra in (("base60", 60, []), ("base30", 30, []), ("refined60", 60, ["--init", str(run_dir)])):
        fits[name] = folder / f"{name}.csv"
        assert evaluate_main(["baseline", str(tests[snr]), "-o", str(fits[name]), "-q", *extra]) == 0
    return {"run": run_dir, "tests": tests, "fits": fits, "folder": folder}


def test_refined_fit_records_its_starting_model(setting):
    manifest = json.loads((setting["fits"]["refined60"].with_name("refined60.csv.json")).read_text())
    assert manifest["init"] == "given" and manifest["init_model"] == "t"
    refined = pd.read_csv(setting["fits"]["refined60"])
    base = pd.read_csv(setting["fits"]["base60"])
    assert len(refined) == 12 and refined.converged.all()
    # Both fits reach the same likelihood maximum from different starts.
    np.testing.assert_allclose(refined.flux, base.flux, rtol=2e-3)


def test_report_tables_are_right_complete_and_reproducible(setting, tmp_path):
    inputs = dict(
        runs=[setting["run"]],
        test_sets=[setting["tests"][60], setting["tests"][30]],
        fits=list(setting["fits"].values()),
    )
    report = write_report(tmp_path / "a", **inputs)
    table = report.test_table
    snrs = list(table.SNR.unique())  # each set's own SNR, highest first
    assert len(snrs) == 2 and snrs[0] > snrs[1] and len(table) == 10
    assert {"CRB", "t bias", "t std", "baseline bias", "baseline std", "refined t bias"} <= set(table.columns)
    # The numbers are the metrics of the fits against the bound.
    ds = load_dataset(setting["tests"][60])
    fits = pd.read_csv(setting["fits"]["base60"])
    truth = ds.label[0].astype(float)
    bound = cramer_rao(truth, 0.5, 200.0).std.to_numpy()
    expected = estimator_metrics(
        np.tile(truth, (12, 1)), fits[["flux", "sersic_n", "hlr", "g1", "g2"]].to_numpy(), bound
    )
    rows = table[table.SNR == snrs[0]].set_index("parameter")
    np.testing.assert_allclose(rows["baseline std"], expected["std"], rtol=1e-12)
    np.testing.assert_allclose(rows["CRB"], bound, rtol=1e-12)

    for stem in ("test_sets", "validation"):
        for ext in ("csv", "md", "tex"):
            text = (tmp_path / "a" / f"{stem}.{ext}").read_text()
            assert "sha256" in text and "galparam" in text, (stem, ext)
    csv = pd.read_csv(tmp_path / "a" / "test_sets.csv", comment="#")
    assert csv.shape == table.shape
    validation = pd.read_csv(tmp_path / "a" / "validation.csv", comment="#")
    metrics = json.loads((setting["run"] / "metrics.json").read_text())["labels"]
    assert validation.loc[0, "flux RMSE"] == pytest.approx(metrics["flux"]["rmse"], rel=1e-5)
    assert "\\begin{tabular}" in (tmp_path / "a" / "test_sets.tex").read_text()
    for name in (
        f"errors_snr{snrs[0]}",
        f"bias_spread_snr{snrs[1]}",
        "true_vs_predicted_t",
        "error_vs_true_t",
        "reconstructions_t",
    ):
        assert (tmp_path / "a" / "plots" / f"{name}.png").stat().st_size > 10_000, name

    write_report(tmp_path / "b", **inputs)
    for stem in ("test_sets", "validation"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "a" / f"{stem}.{ext}").read_bytes() == (tmp_path / "b" / f"{stem}.{ext}").read_bytes()


def test_report_console_and_its_errors(setting, tmp_path, capsys, datasets):
    args = ["report", "-o", str(tmp_path / "r"), "--test-sets", str(setting["tests"][60])]
    assert evaluate_main([*args, "--fits", str(setting["fits"]["base60"])]) == 0
    assert "baseline bias" in capsys.readouterr().out
    cases = [
        ([*args, "--fits", str(setting["fits"]["base30"])], "not among the test sets given"),
        (["report", "-o", str(tmp_path / "x"), "--test-sets", str(datasets["fixed"]), "--fits"], "nothing to report"),
        (
            ["report", "-o", str(tmp_path / "x"), "--test-sets", str(datasets["fixed"]), "--runs", str(setting["run"])],
            "not a fixed-parameter test set",
        ),
        (["report", "-o", str(tmp_path / "x"), "--runs", str(tmp_path)], "not a finished galparam run"),
        (
            ["baseline", str(setting["tests"][60]), "-o", str(tmp_path / "f.csv"), "--init", str(tmp_path)],
            "not a finished",
        ),
    ]
    for argv, words in cases:
        assert run(evaluate_main, argv, prog="galparam-evaluate") == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "f.csv").exists()


def test_fits_of_a_prior_drawn_dataset_join_the_efficiency_shear_and_coverage_tables(setting, tmp_path, datasets):
    from scipy import stats

    from galparam.evaluate.crb import batch_bounds

    prior_fits = tmp_path / "prior.csv"
    assert evaluate_main(["baseline", str(datasets["fixed"]), "-o", str(prior_fits), "-q", "--n-images", "12"]) == 0
    report = write_report(
        tmp_path / "r", test_sets=[setting["tests"][60]], fits=[setting["fits"]["base60"], prior_fits]
    )
    ds = load_dataset(datasets["fixed"])
    name = f"baseline on {ds.spec.name}"
    fits = pd.read_csv(prior_fits)
    truth, estimate = ds.label[:12].astype(float), fits[["flux", "sersic_n", "hlr", "g1", "g2"]].to_numpy()
    errors = fits[[f"{n}_err" for n in ("flux", "sersic_n", "hlr", "g1", "g2")]].to_numpy()
    efficiency = report.efficiency_table
    assert set(efficiency.model) == {name}
    for by, rows in efficiency.groupby("by"):
        assert rows.groupby("parameter").images.sum().eq(12).all(), by
    assert efficiency["claimed std/crb"].between(0.3, 3).all()  # the inverse-Fisher errors, near the bound
    # the coverage of the fit's inverse-Fisher errors, by hand
    coverage = report.coverage_table.set_index(["snr_bin", "parameter"]).loc["all"]
    inside = np.abs(truth - estimate) <= stats.norm.ppf(0.84) * errors
    np.testing.assert_allclose(coverage["coverage_68"], inside.mean(axis=0), rtol=1e-12)
    cov = batch_bounds(truth, ds.psf_fwhm[:12], ds.sigma[:12], poisson=ds.spec.poisson_noise)
    bound = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    np.testing.assert_allclose(coverage["median std/crb"], np.median(errors / bound, axis=0), rtol=1e-6)
    assert set(report.shear_table.model) == {name}
    assert (tmp_path / "r" / "plots" / f"efficiency_baseline-on-{ds.spec.name}.png").stat().st_size > 10_000


@pytest.mark.slow  # make test-fast keeps its 5 minutes
def test_report_puts_the_bayes_risk_beside_the_bound(setting, tmp_path):
    posterior = tmp_path / "post60.csv"
    run_posterior(setting["tests"][60], posterior, target_ess=100, jobs=1, progress=False)
    inputs = dict(test_sets=[setting["tests"][60]], fits=[setting["fits"]["base60"]], posteriors=[posterior])
    table = write_report(tmp_path / "r", **inputs).test_table.set_index("parameter")
    post = pd.read_csv(posterior)
    fits = pd.read_csv(setting["fits"]["base60"])
    truth = load_dataset(setting["tests"][60]).label[0].astype(float)
    for k, label in enumerate(("flux", "sersic_n", "hlr", "g1", "g2")):
        root_mmse = np.sqrt(np.mean(post[f"{label}_std"] ** 2))
        assert table.loc[label, "√MMSE"] == pytest.approx(root_mmse, rel=1e-12)
        rmse = np.sqrt(np.mean((fits[label] - truth[k]) ** 2))
        assert table.loc[label, "baseline rmse/√MMSE"] == pytest.approx(rmse / root_mmse, rel=1e-12)
        bias = post[f"{label}_mean"].mean() - truth[k]
        assert table.loc[label, "posterior mean bias"] == pytest.approx(bias, rel=1e-9, abs=1e-12)
    header = (tmp_path / "r" / "test_sets.md").read_text()
    assert "posteriors post60.csv" in header and "prior of t60" in header
    with pytest.raises(GalparamError, match="not among the test sets given"):
        write_report(tmp_path / "s", test_sets=[setting["tests"][30]], posteriors=[posterior])


@pytest.mark.slow  # make test-fast keeps its 5 minutes
def test_efficiency_cells_put_the_bayes_risk_beside_the_bound(setting, tmp_path):
    data = RunFolder(setting["run"]).info()["dataset"]["path"]
    posterior = tmp_path / "post.csv"
    run_posterior(data, posterior, n_images=16, target_ess=100, jobs=1, progress=False)
    report = write_report(tmp_path / "r", runs=[setting["run"]], posteriors=[posterior])
    efficiency = report.efficiency_table
    name = f"posterior mean on {load_dataset(data).spec.name}"
    assert {"t", name} <= set(efficiency.model)
    # every cell holding some of the posteriors' images gets the ratio (the network's cells are its
    # validation split's quintiles: an end cell may hold none of 16 images)
    assert efficiency[efficiency.model == name]["rms err/√MMSE"].notna().all()
    assert efficiency[efficiency.model == "t"]["rms err/√MMSE"].notna().mean() >= 0.75
    # a cell of the posterior mean's own map, by hand: its RMSE over the root of its mean posterior variance
    post = pd.read_csv(posterior)
    truth = load_dataset(data).label[post["index"].to_numpy()]
    cells = efficiency[(efficiency.model == name) & (efficiency.by == "hlr") & (efficiency.parameter == "hlr")]
    edges = np.unique(np.quantile(truth[:, 2], np.linspace(0, 1, 6)))
    edges[-1] = np.nextafter(edges[-1], np.inf)
    first = (truth[:, 2] >= edges[0]) & (truth[:, 2] < edges[1])
    rmse = np.sqrt(np.mean((post["hlr_mean"][first] - truth[first, 2]) ** 2))
    expected = rmse / np.sqrt(np.mean(post["hlr_std"][first] ** 2))
    assert cells["rms err/√MMSE"].iloc[0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("ratios", [(0.6, 0.9), (0.8, 2.5)], ids=["below-the-bound-everywhere", "both-sides"])
def test_efficiency_heat_maps_share_one_scale_that_reaches_below_the_bound(ratios, tmp_path, monkeypatch):
    """An estimator that beats the bound in every cell (a biased one can) is drawn, not refused by
    matplotlib; every panel uses the colour bar's scale, from min(1, smallest) to the largest."""
    import matplotlib.pyplot as plt

    from galparam.parameters import LABEL_NAMES
    from galparam.report.figures import plot_efficiency

    rows = [
        {"by": by, "bin": f"[{b}, {b + 1})", "parameter": p, "rms err/crb": ratios[k]}
        for k, by in enumerate(("snr", "hlr"))
        for b in range(3)
        for p in LABEL_NAMES
    ]
    shown = []
    original = plt.Figure.savefig

    def keep_scales(fig, *args, **kwargs):
        shown.extend(ax.images[0].get_clim() for ax in fig.axes if ax.images)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep_scales)
    path = plot_efficiency(pd.DataFrame(rows), "t", tmp_path / "e.png")
    assert path.stat().st_size > 0
    assert shown == [(min(1.0, ratios[0]), ratios[1])] * 2
