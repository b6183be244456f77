"""Searches: the resumable grid, KerasTuner (one real trial, and chief + workers), AutoKeras, the dashboard."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import grid_spec_dict

import galparam.search.grid as grid_module
from galparam.cli.common import run
from galparam.cli.search import main as search_main
from galparam.models import resolve_hyperparameters
from galparam.search.dashboard import read_trials, write_dashboard
from galparam.search.grid import run_grid
from galparam.specs import experiment_from_dict
from galparam.train import train

spec_dict = grid_spec_dict


def write_spec(tmp_path, raw, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_grid_writes_a_trial_each_and_resumes(tiny_grid, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(tiny_grid["results"], results)
    trials = read_trials(results)
    assert len(trials) == 4 and trials.val_loss.notna().all()
    assert {(r.conv2d_num_filters, r.sep_num_filters) for r in trials.itertuples()} == {(4, 4), (4, 8), (8, 4), (8, 8)}
    record = json.loads(next(results.glob("trial-*.json")).read_text())
    for key in ("val_loss", "epochs", "parameters", "train_seconds", "inference_images_per_s", "seed"):
        assert key in record
    # A search killed during its third trial has two trial files: running it again trains the other two.
    for path in sorted(results.glob("trial-*.json"))[2:]:
        path.unlink()
    trained = []
    original = grid_module.run_trial

    def counting(spec, data, point):
        trained.append(point)
        return original(spec, data, point)

    monkeypatch.setattr(grid_module, "run_trial", counting)
    again = run_grid(tiny_grid["spec"], results, progress=False)
    assert len(trained) == 2 and len(again) == 4
    # Same seed, same trial: the retrained records equal the first search's (timings aside).
    timing = ["train_seconds", "inference_images_per_s"]
    pd.testing.assert_frame_equal(
        again.drop(columns=timing).sort_values("trial").reset_index(drop=True),
        trials.drop(columns=timing).sort_values("trial").reset_index(drop=True),
        rtol=1e-5,
    )
    run_grid(tiny_grid["spec"], results, progress=False)
    assert len(trained) == 2  # a finished search trains nothing


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"grid": {"filters": [1, 2]}}, "unknown xception argument 'filters'; accepted: conv2d_num_filters"),
        ({"grid": {}}, "grid: give a mapping"),
        ({"search": "tune", "grid": None, "tuner": "annealing"}, "tuner: 'annealing' is not accepted"),
        ({"dataset": "missing.npz"}, "no such file"),
    ],
)
def test_bad_searches_fail_cleanly(datasets, tmp_path, capsys, changes, words):
    raw = {k: v for k, v in spec_dict(datasets, **changes).items() if v is not None}
    command = raw["search"]
    path = write_spec(tmp_path, raw)
    assert run(search_main, [command, str(path), "-o", str(tmp_path / "out")], prog="galparam-search") == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_results_folder_refuses_another_spec(datasets, tmp_path, capsys):
    one = write_spec(tmp_path, spec_dict(datasets, grid={"conv2d_num_filters": [4]}), "one.yaml")
    two = write_spec(tmp_path, spec_dict(datasets, grid={"conv2d_num_filters": [8]}), "two.yaml")
    assert search_main(["grid", str(one), "-o", str(tmp_path / "r"), "-q"]) == 0
    assert run(search_main, ["grid", str(two), "-o", str(tmp_path / "r"), "-q"], prog="galparam-search") == 2
    err = capsys.readouterr().err
    assert "another search spec" in err and err.strip().endswith("to replace its results, pass --overwrite"), err
    assert search_main(["grid", str(two), "-o", str(tmp_path / "r"), "-q", "--overwrite"]) == 0
    trials = read_trials(tmp_path / "r")
    assert list(trials.conv2d_num_filters) == [8]  # the other spec's trial is gone
    assert search_main(["grid", str(one), "-o", str(tmp_path / "r"), "-q", "--force"]) == 0  # the former spelling
    assert list(read_trials(tmp_path / "r").conv2d_num_filters) == [4]


def test_one_trial_tuner_search_feeds_galparam_train(datasets, tmp_path):
    raw = spec_dict(datasets, search="tune", tuner="random", max_trials=1)
    raw.pop("grid")
    path = write_spec(tmp_path, raw)
    assert search_main(["tune", str(path), "-o", str(tmp_path / "tuned"), "-q"]) == 0
    best = json.loads((tmp_path / "tuned" / "best_hyperparameters.json").read_text())
    assert best["val_loss"] > 0 and "sep_num_filters" in best["hyperparameters"]
    # galparam-train takes the file as it is.
    experiment = experiment_from_dict(
        {
            "name": "from-search",
            "family": "xception",
            "dataset": str(datasets["fixed"]),
            "hyperparameters": str(tmp_path / "tuned" / "best_hyperparameters.json"),
            "max_images": 200,
            "epochs": 1,
        }
    )
    hp, lr = resolve_hyperparameters(experiment)
    assert hp["sep_num_filters"] == best["hyperparameters"]["sep_num_filters"]
    assert lr == pytest.approx(best["hyperparameters"]["learning_rate"])
    assert (train(experiment, tmp_path / "run", verbose=0) / "run.json").exists()
    trials = read_trials(tmp_path / "tuned")
    assert len(trials) == 1 and trials.loc[0, "parameters"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_tuner_chief_and_two_workers(datasets, tmp_path):
    raw = spec_dict(datasets, search="tune", tuner="random", max_trials=4, max_images=200)
    raw.pop("grid")
    path = write_spec(tmp_path, raw)
    port = str(_free_port())
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    command = [sys.executable, "-m", "galparam.cli.search", "tune", str(path), "-o", str(tmp_path / "shared"), "-q"]
    chief = subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": "chief"})
    workers = [subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": f"tuner{i}"}) for i in range(2)]
    try:
        deadline = time.monotonic() + 900
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            assert chief.poll() in (None, 0), "the chief failed"
            time.sleep(1)
        assert [w.poll() for w in workers] == [0, 0]
        assert chief.wait(timeout=120) == 0
    finally:
        for p in (chief, *workers):
            if p.poll() is None:
                p.kill()
    trials = read_trials(tmp_path / "shared")
    assert len(trials) == 4 and (trials.status == "COMPLETED").all()
    assert set(trials.tuner_id) == {"tuner0", "tuner1"}  # both workers ran trials
    assert (tmp_path / "shared" / "best_hyperparameters.json").exists()


@pytest.mark.slow
def test_one_trial_autokeras_search(datasets, tmp_path):
    raw = spec_dict(datasets, search="autokeras", tuner="greedy", max_trials=1, max_images=100, block_types=["vanilla"])
    raw.pop("grid")
    raw.pop("hyperparameters")
    path = write_spec(tmp_path, raw)
    assert search_main(["autokeras", str(path), "-o", str(tmp_path / "ak"), "-q"]) == 0
    best = json.loads((tmp_path / "ak" / "best_hyperparameters.json").read_text())
    assert best["search"] == "autokeras" and best["hyperparameters"]["image_block_1/block_type"] == "vanilla"
    from galparam import load_dataset, load_estimator

    estimates = load_estimator(tmp_path / "ak" / "best").predict(load_dataset(datasets["fixed"]).img[:3])
    assert estimates.shape == (3, 5)
    assert len(read_trials(tmp_path / "ak")) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_dashboard_renders_every_trial_in_headless_chromium(tiny_grid, tmp_path):
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed for this test (make test installs it: make system-packages)")
    shutil.copytree(tiny_grid["results"], tmp_path / "results")
    html, png, trials = write_dashboard(tmp_path / "results")
    assert png.stat().st_size > 5000
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            Path(html).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # Rendered elements (an SVG axis label, a table cell), not the data embedded in the page's script.
    for trial in trials.trial:
        assert re.search(rf">\s*{trial}\s*</(text|td|div|span)>", dom), f"{trial} not rendered"
    assert dom.count("<tr") >= len(trials) + 1  # the table: a header and one row per trial
