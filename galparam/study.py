"""The reference's study as steps: what ``make demo`` and the notebooks call.

A :class:`Study` runs at one of two settings. ``small`` uses the ``-small`` specs (2,000-image
datasets, short searches and trainings: minutes on 2 CPU cores); ``full`` uses the full-scale specs
(200,000-image datasets, the reference's searches and trainings: a GPU machine). Every step makes
what is missing and reuses what is already there, so a notebook or the demo can be run again, or
after an interruption, without redoing finished work:

- :meth:`Study.datasets` simulates the datasets not yet in ``OUTPUT/data`` (or whose spec changed);
- :meth:`Study.search` resumes a search in ``OUTPUT/search/NAME``;
- :meth:`Study.train` resumes a training in ``OUTPUT/runs/NAME`` (a finished one is returned);
- :meth:`Study.baseline` resumes the likelihood fits in ``OUTPUT/fits/``;
- :meth:`Study.report` writes the report (tables and plots) from what the steps made.

The specs come from the project's ``data/`` and ``experiments/`` folders; each experiment and
search is pointed at the study's own copy of its dataset.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from galparam import report as reporting
from galparam.baseline import network_starting_points, run_baseline
from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.parameters import LABEL_NAMES
from galparam.posteriors import run_posterior
from galparam.runs import RunFolder
from galparam.search.automl import run_autokeras
from galparam.search.dashboard import read_trials, write_dashboard
from galparam.search.grid import run_grid
from galparam.search.tuner import run_tuner
from galparam.simulate import Workers, simulate
from galparam.specs import load_experiment, load_search, load_spec
from galparam.tables import provenance, sha256
from galparam.train import train

SETTINGS = ("small", "full")
DATASETS = ("v1", "v2", "v3", "test_snr60", "test_snr30")
"""The datasets of :meth:`Study.datasets` by default; ``v1-denoise`` ... ``v3-denoise`` (the
denoisers' own sets) are made when asked for."""
TEST_SETS = {60: "test_snr60", 30: "test_snr30"}
DEFAULT_OUTPUT = {"small": Path("runs/demo"), "full": Path("runs/full")}
BASELINE_IMAGES = {"small": 60, "full": None}  # None: every image of the test set
POSTERIOR_IMAGES = {"small": 16, "full": 1000}
"""Images whose posteriors a study samples (the full setting: the Bayes risk from 1,000 posteriors)."""
POSTERIOR_ESS = {"small": 200, "full": 500}
"""Effective samples per posterior (the small setting: a demo's minutes)."""


def dataset_table(paths) -> pd.DataFrame:
    """One row per dataset file: images, PSF and noise ranges, SNR range and rejection rate.

    Parameters
    ----------
    paths : sequence of path-like
        galparam datasets (``.npz``).

    Returns
    -------
    DataFrame
        Columns ``dataset``, ``images``, ``PSF FWHM min/max`` (arcsec), ``sigma min/max``
        (counts), ``SNR min/median/max`` and ``rejection rate`` (the fraction of candidates the SNR
        window rejected: 1 − images / candidates drawn).
    """
    rows = []
    for path in map(Path, paths):
        ds = load_dataset(path, mmap=True)
        rows.append(
            {
                "dataset": ds.spec.name,
                "images": len(ds),
                "PSF FWHM min": float(ds.psf_fwhm.min()),
                "PSF FWHM max": float(ds.psf_fwhm.max()),
                "sigma min": float(ds.sigma.min()),
                "sigma max": float(ds.sigma.max()),
                "SNR min": float(ds.snr.min()),
                "SNR median": float(np.median(ds.snr)),
                "SNR max": float(ds.snr.max()),
                "rejection rate": 1.0 - len(ds) / float(ds.extra["draws"].sum()),
            }
        )
    return pd.DataFrame(rows)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Study:
    """The study at one setting, writing under one folder.

    Parameters
    ----------
    setting : {"small", "full"}
        ``small``: the ``-small`` specs, minutes on 2 CPU cores; ``full``: the reference's scale.
    output : path-like, optional
        Where datasets, searches, runs and fits go; default ``runs/demo`` (small) or ``runs/full``.
    project : path-like
        The folder holding ``data/`` and ``experiments/`` (the repository root).
    jobs : int, optional
        Worker processes for simulation and fits; default all cores.
    progress : bool
        Progress bars and one line per step on standard error.
    """

    setting: str = "small"
    output: Path | None = None
    project: Path = Path(".")
    jobs: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise GalparamError(f"setting {self.setting!r}: accepted {', '.join(SETTINGS)}")
        self.project = Path(self.project)
        self.output = Path(self.output) if self.output is not None else self.project / DEFAULT_OUTPUT[self.setting]
        for folder in ("data", "experiments"):
            if not (self.project / folder).is_dir():
                raise GalparamError(f"project {self.project}: has no {folder}/ folder (give the repository root)")

    # ------------------------------------------------------------------ names and places

    def name(self, base: str) -> str:
        """The spec name of ``base`` at this setting (``v1`` → ``v1-small`` when small)."""
        return f"{base}-small" if self.setting == "small" else base

    @property
    def data_dir(self) -> Path:
        return self.output / "data"

    @property
    def runs_dir(self) -> Path:
        return self.output / "runs"

    @property
    def search_dir(self) -> Path:
        return self.output / "search"

    @property
    def fits_dir(self) -> Path:
        return self.output / "fits"

    def dataset_path(self, base: str) -> Path:
        """Where the study keeps dataset ``base`` (``v1``, ``test_snr60``, ...)."""
        return self.data_dir / f"{self.name(base)}.npz"

    def run_dir(self, base: str) -> Path:
        """Where the study trains experiment ``base`` (``xception-v2``, ...)."""
        return self.runs_dir / self.name(base)

    def search_results(self, base: str) -> Path:
        """Where the study keeps search ``base`` (``grid-v1``, ...)."""
        return self.search_dir / self.name(base)

    # ------------------------------------------------------------------ steps

    def datasets(self, bases=DATASETS) -> pd.DataFrame:
        """Simulate the datasets that are missing (or whose spec changed); return :func:`dataset_table`.

        One set of worker processes serves every dataset simulated here, so each Sérsic index's
        GalSim tables are built once per worker.
        """
        todo = []
        for base in bases:
            spec = load_spec(self.project / "data" / f"{self.name(base)}.yaml")
            path = self.dataset_path(base)
            if not (path.exists() and load_dataset(path, mmap=True).spec.digest() == spec.digest()):
                todo.append((spec, path))
        if todo:
            with Workers(self.jobs) as workers:
                for spec, path in todo:
                    if self.progress:
                        _say(f"simulating {spec.name} ({spec.size} images) into {path}")
                    simulate(spec, path, overwrite=True, progress=self.progress, workers=workers)
        return dataset_table([self.dataset_path(b) for b in bases])

    def experiment(self, base: str):
        """Experiment spec ``base`` at this setting, reading the study's copy of its dataset (and
        of its denoiser's run, for a two-stage or joint experiment)."""
        spec = load_experiment(self.project / "experiments" / f"{self.name(base)}.yaml")
        if spec.denoiser is not None:  # the study's own run of that denoiser
            spec = dataclasses.replace(spec, denoiser=(self.runs_dir / spec.denoiser.name).resolve())
        if spec.on_the_fly:  # drawn from the project's dataset spec; there is no file to copy
            return spec
        return dataclasses.replace(spec, dataset=(self.data_dir / spec.dataset.name).resolve())

    def search_spec(self, base: str):
        """Search spec ``base`` at this setting, reading the study's copy of its dataset."""
        spec = load_search(self.project / "experiments" / "search" / f"{self.name(base)}.yaml")
        experiment = dataclasses.replace(
            spec.experiment, dataset=(self.data_dir / spec.experiment.dataset.name).resolve()
        )
        return dataclasses.replace(spec, experiment=experiment)

    def _needs(self, dataset: Path) -> None:
        if not dataset.exists():
            base = dataset.stem.removesuffix("-small")
            raise GalparamError(
                f"{dataset} is missing: run Study.datasets([{base!r}]) (or the datasets notebook) first"
            )

    def search(self, base: str, *, overwrite: bool = False, force: bool = False) -> pd.DataFrame:
        """Run (or resume) search ``base`` (``grid-v1``, ``tune-v1``, ``autokeras-v1``); return its trials.

        ``overwrite`` replaces the results of another version of its spec in its folder (``force``
        is the former name of the same thing).
        """
        overwrite = overwrite or force
        spec = self.search_spec(base)
        self._needs(spec.experiment.dataset)
        results = self.search_results(base)
        if self.progress:
            _say(f"{spec.search} search {spec.name} into {results}")
        verbose = 1 if self.progress else 0
        if spec.search == "grid":
            run_grid(spec, results, overwrite=overwrite, progress=self.progress)
        elif spec.search == "tune":
            run_tuner(spec, results, overwrite=overwrite, verbose=verbose)
        else:
            run_autokeras(spec, results, overwrite=overwrite, verbose=verbose)
        return read_trials(results)

    def dashboard(self, base: str):
        """Write search ``base``'s HiPlot dashboard; return (html path, png path, trials)."""
        return write_dashboard(self.search_results(base))

    def train(self, base: str) -> Path:
        """Train (or resume, or reuse the finished run of) experiment ``base``; return the run folder."""
        spec = self.experiment(base)
        if not spec.on_the_fly:
            self._needs(spec.dataset)
        if spec.denoiser is not None and not (spec.denoiser / "run.json").exists():
            first = spec.denoiser.name.removesuffix("-small")
            raise GalparamError(f"{spec.denoiser} is missing: run Study.train({first!r}) first")
        run_dir = self.run_dir(base)
        if self.progress:
            _say(f"training {spec.name} ({spec.family}) into {run_dir}")
        return train(spec, run_dir, resume=True, verbose="auto" if self.progress else 0)

    def baseline(self, snr: int | str, *, n_images: int | None = -1, init: str | None = None) -> Path:
        """Fit the first images of a test set, or of a dataset drawn from a prior, by maximum likelihood (resumable).

        Parameters
        ----------
        snr : {60, 30} or str
            Which test set; or a dataset (``v2``), whose fits give the report's efficiency maps,
            shear and coverage tables an entry for the fit beside the networks.
        n_images : int or None
            How many images; default :data:`BASELINE_IMAGES` (60 small, all full); ``None``: all.
        init : str, optional
            An experiment (``xception-v2``) whose trained network gives each fit's starting point.

        Returns
        -------
        Path
            The fits file (``fits/baseline-snrS.csv`` or ``fits/refined-NAME-snrS.csv``; for a
            dataset ``fits/baseline-v2.csv`` ...).
        """
        if isinstance(snr, str):
            if snr not in DATASETS or snr in TEST_SETS.values():
                accepted = ", ".join(b for b in DATASETS if b not in TEST_SETS.values())
                raise GalparamError(f"dataset {snr!r}: accepted {accepted}, or a test set's SNR")
            data, tag = self.dataset_path(snr), snr
        elif snr in TEST_SETS:
            data, tag = self.dataset_path(TEST_SETS[snr]), f"snr{snr}"
        else:
            raise GalparamError(f"test set SNR {snr}: accepted {', '.join(map(str, TEST_SETS))}")
        self._needs(data)
        n = BASELINE_IMAGES[self.setting] if n_images == -1 else n_images
        starts = source = None
        if init is None:
            out = self.fits_dir / f"baseline-{tag}.csv"
        else:
            out = self.fits_dir / f"refined-{self.name(init)}-{tag}.csv"
            starts, source = network_starting_points(self.run_dir(init), data, n)
            n = len(starts)
        if self.progress:
            _say(f"likelihood fits of {data.name} into {out}")
        run_baseline(
            data,
            out,
            n_images=n,
            jobs=self.jobs,
            init=starts,
            init_source=source,
            progress=self.progress,
        )
        return out

    def posterior(self, snr: int | str, *, n_images: int | None = -1, prior: str = "v2") -> Path:
        """Sample the posteriors of the first images of a test set (under a training set's prior) or
        of a dataset drawn from a prior (under its own); resumable.

        Parameters
        ----------
        snr : {60, 30} or str
            Which test set; or a dataset (``v2``), whose posteriors give the report's efficiency
            maps the Bayes risk of each cell.
        n_images : int or None
            How many images; default :data:`POSTERIOR_IMAGES` (16 small, 1,000 full); ``None``: all.
        prior : str
            For a test set: the dataset (``v2``) whose prior the posteriors take, the networks'
            training prior.

        Returns
        -------
        Path
            The posterior file, ``fits/posterior-snrS.csv`` (a dataset's: ``fits/posterior-v2.csv``).
        """
        if isinstance(snr, str):
            if snr not in DATASETS or snr in TEST_SETS.values():
                accepted = ", ".join(b for b in DATASETS if b not in TEST_SETS.values())
                raise GalparamError(f"dataset {snr!r}: accepted {accepted}, or a test set's SNR")
            data, tag, prior_spec = self.dataset_path(snr), snr, None
        elif snr in TEST_SETS:
            data, tag = self.dataset_path(TEST_SETS[snr]), f"snr{snr}"
            prior_spec = load_spec(self.project / "data" / f"{self.name(prior)}.yaml")
        else:
            raise GalparamError(f"test set SNR {snr}: accepted {', '.join(map(str, TEST_SETS))}")
        self._needs(data)
        n = POSTERIOR_IMAGES[self.setting] if n_images == -1 else n_images
        out = self.fits_dir / f"posterior-{tag}.csv"
        if self.progress:
            _say(f"posteriors of {data.name} into {out}")
        run_posterior(
            data,
            out,
            n_images=n,
            prior_spec=prior_spec,
            target_ess=POSTERIOR_ESS[self.setting],
            jobs=self.jobs,
            progress=self.progress,
        )
        return out

    def report(self, folder=None, *, experiments=(), fits=(), posteriors=(), searches=(), n_images: int | None = -1):
        """Write the report: test-set, validation, dataset and search tables, and the plots.

        Parameters
        ----------
        folder : path-like, optional
            Default ``OUTPUT/report``.
        experiments : sequence of str
            Trained experiments (``xception-v2``, ...) to include.
        fits : sequence of path-like
            Fits files from :meth:`baseline`.
        posteriors : sequence of path-like
            Posterior files from :meth:`posterior` (the Bayes risk beside the bound).
        searches : sequence of str
            Searches (``grid-v1``, ...) whose trials get a table and a plot.
        n_images : int or None
            Test-set images the networks are evaluated on; default as :meth:`baseline`.

        Returns
        -------
        galparam.report.Report
            With ``files`` listing every table and plot written, and ``datasets_table``.
        """
        folder = Path(folder) if folder is not None else self.output / "report"
        n = BASELINE_IMAGES[self.setting] if n_images == -1 else n_images
        test_sets = [self.dataset_path(base) for base in TEST_SETS.values()]
        for path in test_sets:
            self._needs(path)
        report = reporting.compute_report(
            runs=[self.run_dir(e) for e in experiments],
            test_sets=test_sets,
            fits=fits,
            posteriors=posteriors,
            n_images=n,
        )
        paths = sorted(self.data_dir.glob("*.npz"))
        report.datasets_table = dataset_table(paths)
        report.headers["datasets"] = [provenance()] + [f"dataset {p.name}: sha256 {sha256(p)}" for p in paths]
        for base in searches:
            results = self.search_results(base)
            _, png, trials = write_dashboard(results)
            name = self.name(base)
            report.search_tables[name] = trials.drop(columns=[c for c in ("status", "family") if c in trials.columns])
            report.search_plots[name] = png
            report.headers[f"search_{name}"] = [provenance(), f"trials of {results}"]
        report.contents = dataclasses.replace(
            report.contents, datasets=True, searches=tuple(self.name(base) for base in searches)
        )
        return reporting.write(report, folder)


def elapsed(start: float) -> str:
    """``M min S s`` since ``start`` (a ``time.perf_counter()`` value)."""
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)  # 179.6 s is 3 min 0 s, not 2 min 60 s
    return f"{minutes} min {seconds} s"


def read_metrics(run_dir) -> pd.DataFrame:
    """A run's validation metrics (``metrics.json``) as a table, one row per parameter."""
    return pd.DataFrame(RunFolder(run_dir).metrics()).T.loc[list(LABEL_NAMES)]
