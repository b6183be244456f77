"""The full-scale study on one GPU within a time budget: ``make gpu-study OUT=folder``.

Runs on Keras's JAX backend (set here unless ``KERAS_BACKEND`` says otherwise) and needs neither
TensorFlow nor GalSim: the k-space renderer draws from its table cache (``galparam-simulate
tables --copy-to DIR``, then ``GALPARAM_CACHE=DIR``). docs/gpu-study.md says how to run it on a
borrowed GPU machine. Steps, each timed, each skipped (and said so) when the budget is spent:

1. draw both fixed-parameter test sets (10,000 images each) with every core;
2. train the v2 Xception on fresh images drawn each epoch (180,000 an epoch, as the study), drawn
   on the device inside the training step on JAX (``--draw-on device``, :mod:`galparam.device_draw`;
   ``host``: CPU processes), with its fixed 20,000-image validation set drawn into the run folder,
   early stopping, and a deadline that leaves time for the rest;
3. predict both test sets (every batch in one device call, :func:`galparam.backend.predict`);
   per-image Cramér–Rao bounds from the model's exact Jacobian, on the device
   (:func:`galparam.evaluate.device_fit.device_bounds`);
4. likelihood fits of every test image, plain and started from the network, solved on the device
   (:class:`galparam.evaluate.device_fit.DeviceFit`; on TensorFlow the numpy fits of the first 1,000);
5. write the tables (at most 8 files, flat) into OUT: ``study.md`` (everything, for a note),
   ``validation.csv`` (RMSE beside the study's full-scale figures), ``test_sets.csv`` (bias,
   spread and RMSE against the bound), ``timing.csv``, ``history.csv``, ``status.json``.

``--toy`` runs the same steps at a size that takes about a minute on a CPU (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # galparam from this checkout, also where it is not installed (a GPU machine)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

STUDY_RMSE = {"flux": 5913.0, "sersic_n": 0.780, "hlr": 0.0462, "g1": 0.0737, "g2": 0.0735}
"""The study's full-scale validation RMSE (noisy v1, its best Xception): the reference column."""

SCALES = {
    "full": dict(
        train_images=180_000,
        validation_images=20_000,
        test_images=10_000,
        fit_images=10_000,
        host_fit_images=1_000,  # the numpy fits' share where the device cannot fit (TensorFlow)
        epochs=200,
        patience=6,
        batch_size=128,
        hyperparameters=None,  # the experiment's own
        reserve_s=150.0,  # what steps 3-5 are given after the training's deadline
        min_step_s=20.0,  # a step after the training starts only with this much time left
    ),
    "toy": dict(
        train_images=256,
        validation_images=64,
        test_images=64,
        fit_images=8,
        host_fit_images=8,
        epochs=2,
        patience=0,
        batch_size=32,
        hyperparameters={"conv2d_num_filters": 4, "sep_num_filters": 8, "num_residual_blocks": 1},
        reserve_s=0.0,
        min_step_s=0.0,
    ),
}


class Clock:
    """Elapsed time against the budget, and the progress lines."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def deadline(self) -> float:
        return self.start + self.budget_s

    def left(self) -> float:
        return self.budget_s - self.elapsed

    def say(self, message: str) -> None:
        print(f"[{self.elapsed:7.1f} s] {message}", flush=True)


class Terminated(BaseException):
    """SIGTERM (a time limit outside the budget): the tables so far are written, then the study stops."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("output", type=Path, help="folder for the tables (at most 8 files, flat)")
    p.add_argument("--toy", action="store_true", help="the same steps at toy size (about a minute on a CPU)")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop cleanly within this many seconds (default 540)")
    p.add_argument("--work", type=Path, help="folder for data and the run (default: a temporary folder)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: 128 full, 32 toy)")
    p.add_argument("--jobs", type=int, help="processes for drawing and fits (default: every core)")
    p.add_argument(
        "--draw-on",
        choices=("device", "host"),
        help="where the training images are drawn (default: device on JAX, host otherwise)",
    )
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s {args.budget_s:g}: a positive number of seconds is accepted")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size}: a whole number >= 1 is accepted")
    return args


def environment() -> dict:
    import keras

    from galparam import __version__, backend

    info = {"galparam": __version__, "keras": keras.__version__, "backend": backend.name(), "cores": os.cpu_count()}
    if info["backend"] == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d) for d in jax.devices()]
    return info


def write_specs(work: Path, scale: dict, batch_size: int, toy: bool, draw_on: str):
    """The v2 dataset spec sized for this scale, the experiment on it, the test-set specs."""
    from galparam.specs import experiment_from_dict, load_spec
    from galparam.specs.experiment import relocate_paths
    from galparam.specs.files import read_spec_file

    v2 = load_spec(ROOT / "data" / "v2.yaml").to_dict()  # resolved: v2.yaml extends v1.yaml
    total = scale["train_images"] + scale["validation_images"]
    v2.update(size=total, validation_fraction=scale["validation_images"] / total)
    (work / "v2.yaml").write_text(yaml.safe_dump(v2, sort_keys=False))
    raw = read_spec_file(ROOT / "experiments" / "xception-v2-fly.yaml", "experiment spec", relocate_paths)
    raw.update(
        name="gpu-study-xception-v2" + ("-toy" if toy else ""),
        dataset={"spec": "v2.yaml", "on_the_fly": True, "draw_on": draw_on},
        epochs=scale["epochs"],
        patience=scale["patience"],
        batch_size=batch_size,
    )
    if scale["hyperparameters"]:
        raw["hyperparameters"] = scale["hyperparameters"]
    experiment = experiment_from_dict(raw, source="gpu-study experiment", base_dir=work)
    tests = {
        snr: load_spec(ROOT / "data" / f"test_snr{snr}.yaml").with_overrides(size=scale["test_images"])
        for snr in (60, 30)
    }
    return experiment, tests


class GpuStudy:
    def __init__(self, args, env: dict):
        self.args = args
        self.env = env
        self.toy = args.toy
        self.scale = SCALES["toy" if args.toy else "full"]
        self.batch_size = args.batch_size or self.scale["batch_size"]
        self.on_device = env["backend"] == "jax"
        self.draw_on = args.draw_on or ("device" if self.on_device else "host")
        self.clock = Clock(args.budget_s)
        self.timing: list[dict] = []
        self.unfinished: list[str] = []
        self.notes: list[str] = []
        self.rows: list[dict] = []
        self.validation = None
        self.history = None
        self.run_info: dict = {}

    def timed(self, step: str, images: int, fn):
        began = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - began
        self.timing.append(
            {"step": step, "seconds": round(seconds, 2), "images": images, "images/s": round(images / seconds, 1)}
        )
        self.clock.say(f"{step}: {seconds:.1f} s ({images / seconds:,.0f} images/s)")
        self.write()
        return result

    def has_time(self, step: str) -> bool:
        """Whether ``step`` may start (else it is listed as not finished)."""
        if self.clock.left() > self.scale["min_step_s"]:
            return True
        self.skip(step)
        return False

    def skip(self, step: str) -> None:
        self.unfinished.append(step)
        self.clock.say(f"{step}: skipped, the budget is spent")

    # -- steps ------------------------------------------------------------------------------
    def run(self, work: Path) -> None:
        from galparam.simulate import simulate

        experiment, tests = write_specs(work, self.scale, self.batch_size, self.toy, self.draw_on)
        paths = {}
        for snr, spec in tests.items():
            if self.clock.left() <= 0:
                self.skip(f"test set SNR {snr}")
                continue
            path = work / f"test_snr{snr}.npz"
            self.timed(
                f"draw test set SNR {snr}",
                spec.size,
                lambda spec=spec, path=path: simulate(spec, path, jobs=self.args.jobs, progress=False),
            )
            paths[snr] = path
        run_dir = self.train(experiment, work / "run")
        if run_dir is None:
            self.unfinished += [f"evaluation at SNR {snr}" for snr in paths]
            return
        for snr, path in paths.items():
            self.evaluate(snr, path, run_dir, work)

    def train(self, experiment, run_dir: Path):
        from galparam.runs import RunFolder
        from galparam.train import train

        deadline = self.clock.deadline - self.scale["reserve_s"]
        if deadline - time.monotonic() <= 0:
            self.skip("training")
            return None
        self.clock.say(
            f"training {experiment.name}: {self.scale['train_images']:,} fresh images an epoch "
            f"drawn on the {self.draw_on}, "
            f"batch {self.batch_size}, until epoch {experiment.epochs} or {deadline - time.monotonic():.0f} s"
        )
        began = time.perf_counter()
        train(experiment, run_dir, resume=True, verbose=2 if not self.toy else 0, deadline=deadline)
        seconds = time.perf_counter() - began
        run = RunFolder(run_dir)
        self.run_info = run.info()
        self.history = pd.read_csv(run.history_path)
        epochs = int(self.history.epoch.max())
        seen = epochs * self.scale["train_images"]
        per_epoch = self.history.seconds.median()
        self.timing.append(
            {"step": "training", "seconds": round(seconds, 2), "images": seen, "images/s": round(seen / seconds, 1)}
        )
        self.timing.append(
            {
                "step": "training, median epoch",
                "seconds": round(per_epoch, 2),
                "images": self.scale["train_images"],
                "images/s": round(self.scale["train_images"] / per_epoch, 1),
            }
        )
        stage = self.run_info["stages"]["xception"]
        if stage.get("stopped_by_deadline"):
            self.unfinished.append(f"training stopped by the budget after {epochs} epochs, before early stopping")
        self.clock.say(f"trained {epochs} epochs in {seconds:.0f} s (best epoch {stage['best_epoch']})")
        self.write()
        metrics = run.metrics()
        self.validation = pd.DataFrame(
            {
                "parameter": list(STUDY_RMSE),
                "RMSE": [metrics[k]["rmse"] for k in STUDY_RMSE],
                "study RMSE (noisy v1, full scale)": list(STUDY_RMSE.values()),
            }
        )
        self.validation["ratio"] = self.validation["RMSE"] / self.validation["study RMSE (noisy v1, full scale)"]
        return run_dir

    def evaluate(self, snr: int, path: Path, run_dir: Path, work: Path) -> None:
        from galparam.data import load_dataset
        from galparam.estimator import load_estimator
        from galparam.evaluate.crb import batch_bounds
        from galparam.evaluate.device_fit import device_bounds
        from galparam.evaluate.metrics import estimator_metrics
        from galparam.parameters import LABEL_NAMES

        ds = load_dataset(path)
        truth = ds.label.astype(np.float64)
        if not self.has_time(f"evaluation at SNR {snr}"):
            return
        estimator = load_estimator(run_dir)
        predicted = self.timed(
            f"predict SNR {snr}", len(ds), lambda: estimator.predict(ds.img)[list(LABEL_NAMES)].to_numpy()
        )
        if not self.has_time(f"bounds and fits at SNR {snr}"):
            return
        cov = self.timed(
            f"bounds SNR {snr}",
            len(ds),
            lambda: (device_bounds if self.on_device else batch_bounds)(
                truth, ds.psf_fwhm, ds.sigma, poisson=ds.spec.poisson_noise
            ),
        )
        bound = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        estimates = {"xception": (predicted, np.arange(len(ds)))}
        n_fit = min(self.scale["fit_images" if self.on_device else "host_fit_images"], len(ds))
        for name, init in (("fit", None), ("fit from xception", predicted[:n_fit])):
            if self.on_device:
                done = self.device_fits(snr, ds, n_fit, init)
            else:
                done = self.fits(snr, path, work / f"fits-{name.replace(' ', '-')}-snr{snr}.csv", n_fit, init)
            if done is not None:
                estimates[name] = (done[0], done[1])
        for name, (values, rows) in estimates.items():
            table = estimator_metrics(truth[rows], values, bound[rows])
            for label, row in table.iterrows():
                self.rows.append(
                    {
                        "SNR": snr,
                        "estimator": name,
                        "images": len(rows),
                        "parameter": label,
                        "CRB": row["crb"],
                        "bias": row["bias"],
                        "std": row["std"],
                        "rmse": row["rmse"],
                        "bias/CRB": row["bias/crb"],
                        "std/CRB": row["std/crb"],
                    }
                )

    def device_fits(self, snr: int, ds, n_fit: int, init):
        """Fit the first ``n_fit`` images on the device (plain, or from ``init``); (estimates, rows),
        or None past the budget."""
        from galparam.evaluate.device_fit import DeviceFit
        from galparam.evaluate.fitbox import FitBox

        name = "network-started fits" if init is not None else "fits"
        if not self.has_time(f"{name} at SNR {snr}"):
            return None
        fitter = DeviceFit(box=FitBox.from_spec(ds.spec), poisson=ds.spec.poisson_noise)
        images = ds.img[:n_fit].astype(np.float64)
        self.timed(
            f"{name} SNR {snr} (device)",
            n_fit,
            lambda: fitter.fit(images, ds.psf_fwhm[:n_fit], ds.sigma[:n_fit], init=init),
        )
        unconverged = int((~fitter.converged_).sum())
        if unconverged:
            self.notes.append(f"{name} SNR {snr}: {unconverged} of {n_fit} did not converge")
        if init is not None:
            self.notes.append(
                f"{name} SNR {snr}: {int(fitter.from_init_.sum())} of {n_fit} started from the network's "
                "estimate (the others from the moments, where the network's start had the higher NLL)"
            )
        return fitter.theta_, np.arange(n_fit)

    def fits(self, snr: int, path: Path, output: Path, n_fit: int, init):
        """Fit the first ``n_fit`` images (plain, or from ``init``); (estimates, rows), or None past the budget."""
        from galparam.baseline import run_baseline
        from galparam.parameters import LABEL_NAMES

        name = "network-started fits" if init is not None else "fits"
        if not self.has_time(f"{name} at SNR {snr}"):
            return None
        fits = self.timed(
            f"{name} SNR {snr}",
            n_fit,
            lambda: run_baseline(path, output, n_images=n_fit, jobs=self.args.jobs, init=init, progress=False),
        )
        unconverged = int((~fits.converged.astype(bool)).sum())
        if unconverged:
            self.notes.append(f"{name} SNR {snr}: {unconverged} of {len(fits)} did not converge")
        if init is not None:
            started = int(fits.from_init.astype(bool).sum())
            self.notes.append(
                f"{name} SNR {snr}: {started} of {len(fits)} started from the network's estimate "
                "(the others from the moments, where the network's start had the higher NLL)"
            )
        return fits[list(LABEL_NAMES)].to_numpy(), fits["index"].to_numpy()

    # -- output -----------------------------------------------------------------------------
    def write(self, done: bool = False) -> None:
        """Write the tables so far (after every step, so a study stopped from outside still reports)."""
        from galparam.io import write_text_atomic

        out, env = self.args.output, self.env
        out.mkdir(parents=True, exist_ok=True)
        tables = {
            "validation.csv": self.validation,
            "test_sets.csv": pd.DataFrame(self.rows) if self.rows else None,
            "timing.csv": pd.DataFrame(self.timing),
            "history.csv": self.history,
        }
        for name, table in tables.items():
            if table is not None:
                write_text_atomic(out / name, table.to_csv(index=False, float_format="%.6g"))
        status = {
            "scale": "toy" if self.toy else "full",
            "budget_s": self.args.budget_s,
            "elapsed_s": round(self.clock.elapsed, 1),
            "batch_size": self.batch_size,
            "draw_on": self.draw_on,
            "environment": env,
            "finished": done and not self.unfinished,
            "running": not done,
            "not_finished": self.unfinished,
            "notes": self.notes,
            "run": {k: self.run_info.get(k) for k in ("name", "stages", "learning_rate", "hyperparameters")},
        }
        write_text_atomic(out / "status.json", json.dumps(status, indent=2, default=str) + "\n")
        write_text_atomic(out / "study.md", self.markdown(status, tables))

    def markdown(self, status: dict, tables: dict) -> str:
        from galparam.tables import markdown_table

        env = status["environment"]
        lines = [
            f"# galparam GPU study ({status['scale']} scale)",
            "",
            f"Keras {env['keras']} on {env['backend']}"
            + (f" (jax {env['jax']}, devices: {', '.join(env['devices'])})" if "jax" in env else "")
            + f"; {env['cores']} cores; {status['elapsed_s']} s of a {status['budget_s']:g} s budget.",
            "",
        ]
        titles = {
            "validation.csv": "Validation RMSE of the v2 Xception trained on fresh images, beside the study's",
            "test_sets.csv": "Test sets: bias, spread and RMSE against each image's Cramér–Rao bound",
            "timing.csv": "Timing",
        }
        for name, title in titles.items():
            table = tables[name]
            if table is None:
                continue
            lines += [f"## {title}", "", markdown_table(table)]
        if status["notes"]:
            lines += ["## Notes", ""] + [f"- {item}" for item in status["notes"]] + [""]
        lines += ["## Not finished", ""]
        lines += [f"- {item}" for item in status["not_finished"]]
        if status["running"]:
            lines.append("Still running: these are the tables of the steps done so far.")
        elif not status["not_finished"]:
            lines.append("Every step finished.")
        return "\n".join(lines) + "\n"


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    args = parse_args(argv)
    env = environment()
    study = GpuStudy(args, env)
    signal.signal(signal.SIGTERM, _terminate)
    study.clock.say(
        f"galparam GPU study, {'toy' if args.toy else 'full'} scale, backend {env['backend']}, {env.get('devices', '')}"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="galparam-gpu-study-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        study.run(work)
    except Terminated:
        study.unfinished.append("stopped by SIGTERM (a time limit outside --budget-s)")
        return 143
    except BaseException as exc:
        study.unfinished.append(f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    finally:
        study.write(done=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        study.clock.say(
            f"wrote {args.output}/study.md"
            + ("" if not study.unfinished else f"; not finished: {'; '.join(study.unfinished)}")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
