"""galparam.study: settings, where things go, and steps that make what is missing and reuse the rest."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from galparam.errors import GalparamError
from galparam.study import Study, dataset_table, elapsed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    """A project folder with a 30-image v1-small spec and the repository's experiment specs."""
    (tmp_path / "data").mkdir()
    for spec in (ROOT / "data").glob("*.yaml"):  # the specs the small ones extend, too
        shutil.copy(spec, tmp_path / "data" / spec.name)
    text = (ROOT / "data" / "v1-small.yaml").read_text()
    assert "size: 2000" in text
    (tmp_path / "data" / "v1-small.yaml").write_text(text.replace("size: 2000", "size: 30"))
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    return tmp_path


def test_settings_and_places(project):
    small = Study("small", project=project, progress=False)
    assert small.output == project / "runs" / "demo"
    assert small.dataset_path("v1") == project / "runs" / "demo" / "data" / "v1-small.npz"
    assert small.run_dir("xception-v2").name == "xception-v2-small"
    full = Study("full", project=project, output=project / "big", progress=False)
    assert full.search_results("grid-v1") == project / "big" / "search" / "grid-v1"
    spec = full.experiment("xception-v2")
    assert spec.dataset == (project / "big" / "data" / "v2.npz").resolve()
    assert full.search_spec("tune-v1").experiment.dataset == (project / "big" / "data" / "v1.npz").resolve()
    with pytest.raises(GalparamError, match="accepted small, full"):
        Study("medium", project=project)
    with pytest.raises(GalparamError, match="no data/ folder"):
        Study(project=project / "nowhere")


def test_datasets_are_made_once_and_remade_when_their_spec_changes(project):
    study = Study(project=project, jobs=1, progress=False)
    table = study.datasets(["v1"])
    path = study.dataset_path("v1")
    assert list(table.dataset) == ["v1-small"] and table.loc[0, "images"] == 30
    assert 0 <= table.loc[0, "rejection rate"] < 1 and 10 <= table.loc[0, "SNR min"] <= table.loc[0, "SNR max"] <= 100
    made = path.stat().st_mtime_ns
    study.datasets(["v1"])
    assert path.stat().st_mtime_ns == made  # reused
    spec = project / "data" / "v1-small.yaml"
    spec.write_text(spec.read_text().replace("size: 30", "size: 25"))
    table = study.datasets(["v1"])
    assert table.loc[0, "images"] == 25  # the spec changed: made again
    assert dataset_table([path]).equals(table)


def test_steps_say_what_is_missing(project):
    study = Study(project=project, progress=False)
    with pytest.raises(GalparamError, match=r"v2-small.npz is missing: run Study.datasets\(\['v2'\]\)"):
        study.train("xception-v2")
    with pytest.raises(GalparamError, match="accepted 60, 30"):
        study.baseline(45)
    with pytest.raises(GalparamError, match="test_snr60-small.npz is missing"):
        study.baseline(60)


def test_elapsed_time_rounds_to_whole_seconds_without_a_sixtieth():
    now = time.perf_counter()
    assert elapsed(now - 179.6) == "3 min 0 s" and elapsed(now - 59.4) == "0 min 59 s"
