"""Denoise, then measure: does a restoration network before the Xception help, at the 20,000-image
v1 scale? ``python benchmarks/bench_denoise.py OUT`` (``--toy``: the same steps in a minute).

The pipelines, each trained on the first ``--images`` images of v1 (the Xception benchmark's
set, ``data/v1-20k.yaml``; its last 10 % validate) for the same number of epochs:

1. the Xception alone (``experiments/xception-v1-small.yaml``'s architecture);
2. EDSR and RDN denoisers (their families' defaults), each trained on its own noisy/noiseless set
   drawn with another seed (``data/v1-20k-denoise.yaml``), as the reference did;
3. EDSR → Xception and RDN → Xception (two stages: the Xception trains on restored images);
4. the joint model: the trained EDSR and a new Xception trained together (loss weights 5 : 1);
5. the Xception alone again, for the wall-clock time EDSR → Xception took in all (the denoiser's
   training and the Xception's), the fairer comparison when compute is what is spent.

It writes into OUT, after every step (so a run stopped by ``--budget-s`` or SIGTERM still
reports): ``denoise.md`` (both tables, the environment, what did not finish), ``pipelines.csv``
(validation RMSE per parameter, parameters, training seconds and epochs, inference images/s of
the whole pipeline), ``denoisers.csv`` (residual RMS, PSNR, SSIM of noisy and denoised
validation images, the PSNR gain) and ``status.json``. Runs on the JAX or TensorFlow backend
(``KERAS_BACKEND``); data are drawn by the k-space renderer when ``--data`` has none.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # galparam from this checkout, also where it is not installed (a GPU machine)

import pandas as pd  # noqa: E402

from galparam.parameters import LABEL_NAMES  # noqa: E402

TOY = {
    "images": 160,
    "epochs": 2,
    "xception": {"conv2d_num_filters": 4, "sep_num_filters": 8, "num_residual_blocks": 1},
}
TOY_DENOISERS = {
    "edsr": {"num_filters": 4, "num_res_blocks": 1},
    "rdn": {"num_features": 4, "num_blocks": 1, "num_layers": 2, "growth_rate": 4},
}
PREDICT_IMAGES = 2000  # validation images timed through each whole pipeline


class Terminated(BaseException):
    """SIGTERM: the tables so far are written, then the benchmark stops."""


def _terminate(signum, frame):
    raise Terminated()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("output", type=Path, help="folder for the tables")
    p.add_argument("--toy", action="store_true", help="the same steps at toy size (about a minute on a CPU)")
    p.add_argument("--images", type=int, help="images of each set (default 20,000; toy 160)")
    p.add_argument("--epochs", type=int, help="epochs of every training (default 5; toy 2)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32, the reference's)")
    p.add_argument("--budget-s", type=float, help="start no step after this many seconds (default: no limit)")
    p.add_argument(
        "--data", type=Path, default=ROOT / "data", help="where v1-20k.npz and v1-20k-denoise.npz are, or are drawn"
    )
    p.add_argument("--work", type=Path, help="folder for the runs (default: a temporary folder, removed)")
    p.add_argument("--jobs", type=int, help="processes for drawing (default: every core)")
    args = p.parse_args(argv)
    for name in ("images", "epochs", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < (10 if name == "images" else 1):
            p.error(
                f"--{name.replace('_', '-')} {value}: a whole number >= {10 if name == 'images' else 1} is accepted"
            )
    if args.budget_s is not None and args.budget_s <= 0:
        p.error(f"--budget-s {args.budget_s:g}: a positive number of seconds is accepted")
    return args


class Benchmark:
    def __init__(self, args):
        self.args = args
        self.images = args.images or (TOY["images"] if args.toy else 20_000)
        self.epochs = args.epochs or (TOY["epochs"] if args.toy else 5)
        self.start = time.monotonic()
        self.pipelines: list[dict] = []
        self.denoisers: list[dict] = []
        self.unfinished: list[str] = []
        self.env = self.environment()

    @staticmethod
    def environment() -> dict:
        import keras

        from galparam import __version__, backend

        env = {"galparam": __version__, "keras": keras.__version__, "backend": backend.name(), "cores": os.cpu_count()}
        if env["backend"] == "jax":
            import jax

            env["devices"] = [str(d) for d in jax.devices()]
        return env

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f} s] {message}", flush=True)

    def has_time(self, step: str) -> bool:
        if self.args.budget_s is None or time.monotonic() - self.start < self.args.budget_s:
            return True
        self.unfinished.append(step)
        self.say(f"{step}: skipped, the budget is spent")
        return False

    # -- data and specs -------------------------------------------------------------------------
    def dataset(self, name: str) -> Path:
        """``name``.npz (v1-20k or v1-20k-denoise) of at least ``images`` images, drawn if missing."""
        from galparam.data import load_dataset
        from galparam.simulate import simulate
        from galparam.specs import load_spec

        spec = load_spec(ROOT / "data" / f"{name}.yaml")
        if self.images != spec.size:
            spec = spec.with_overrides(size=self.images)
        path = self.args.data / (f"{name}.npz" if self.images == 20_000 else f"{name}-{self.images}.npz")
        if path.exists() and load_dataset(path).spec.digest() == spec.digest():
            return path
        began = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        simulate(spec, path, jobs=self.args.jobs, progress=False)
        self.say(f"drew {path.name}: {self.images:,} images in {time.perf_counter() - began:.1f} s")
        return path

    def experiment(self, name: str, family: str, dataset: Path, **changes):
        from galparam.specs import experiment_from_dict, load_experiment

        raw = {
            "name": name,
            "family": family,
            "dataset": str(dataset),
            "batch_size": self.args.batch_size,
            "epochs": self.epochs,
            "patience": 0,
            "seed": 0,
            "learning_rate": 0.001,
        }
        if family == "xception":
            base = load_experiment(ROOT / "experiments" / "xception-v1-small.yaml")  # resolved: it extends xception-v1
            raw["hyperparameters"] = TOY["xception"] if self.args.toy else base.hyperparameters
        elif self.args.toy:
            raw["hyperparameters"] = TOY_DENOISERS[family]
        raw.update(changes)
        return experiment_from_dict(raw, source=f"bench-denoise {name}")

    # -- steps ----------------------------------------------------------------------------------
    def train(self, spec, folder: Path, **kwargs) -> tuple[Path, float]:
        from galparam.train import train

        began = time.perf_counter()
        train(spec, folder, overwrite=True, verbose=0, **kwargs)
        seconds = time.perf_counter() - began
        self.say(f"trained {spec.name} in {seconds:.1f} s")
        return folder, seconds

    def add_pipeline(self, name: str, run_dir: Path, seconds: float, val_images, denoiser_params: int = 0) -> None:
        from galparam.estimator import load_estimator
        from galparam.runs import RunFolder

        run = RunFolder(run_dir)
        info, metrics = run.info(), run.metrics()
        estimator = load_estimator(run_dir)
        estimator.predict(val_images[:64])  # compiled before it is timed
        began = time.perf_counter()
        estimator.predict(val_images)
        rate = len(val_images) / (time.perf_counter() - began)
        row = {"pipeline": name, **{f"{k} RMSE": metrics[k]["rmse"] for k in LABEL_NAMES}}
        row.update(
            parameters=int(info["parameters"]) + denoiser_params,
            epochs=sum(s["epochs"] for s in info["stages"].values()),
            train_seconds=round(seconds, 1),
            inference_images_per_s=round(rate, 1),
        )
        self.pipelines.append(row)
        self.write()

    def add_denoiser(self, name: str, run_dir: Path, seconds: float) -> int:
        from galparam.runs import RunFolder

        run = RunFolder(run_dir)
        info, restored = run.info(), run.restoration_metrics()
        row = {"denoiser": name, "parameters": int(info["parameters"]), "train_seconds": round(seconds, 1)}
        for kind in ("noisy", "denoised"):
            row.update({f"{kind} {k}": v for k, v in restored[kind].items()})
        row["PSNR gain (dB)"] = restored["denoised"]["psnr_db"] - restored["noisy"]["psnr_db"]
        self.denoisers.append(row)
        self.write()
        return row["parameters"]

    def run(self, work: Path) -> None:
        from galparam.data import load_dataset
        from galparam.runs import RunFolder

        v1, pairs = self.dataset("v1-20k"), self.dataset("v1-20k-denoise")
        ds = load_dataset(v1, mmap=True)
        alone_spec = self.experiment("xception", "xception", v1)
        val_images = None
        if self.has_time("xception"):
            run_dir, seconds = self.train(alone_spec, work / "xception")
            val = RunFolder(run_dir).validation_indices()[:PREDICT_IMAGES]
            val_images = ds.img[val]
            self.add_pipeline("xception", run_dir, seconds, val_images)
        if val_images is None:
            val_images = ds.img[len(ds) - min(PREDICT_IMAGES, len(ds) // 10) :]
        edsr_total = None
        for family in ("edsr", "rdn"):
            if not self.has_time(family):
                continue
            den_dir, den_seconds = self.train(self.experiment(family, family, pairs), work / family)
            params = self.add_denoiser(family, den_dir, den_seconds)
            if not self.has_time(f"{family} → xception"):
                continue
            two = self.experiment(f"{family}-xception", "xception", v1, denoiser=str(den_dir))
            run_dir, seconds = self.train(two, work / f"{family}-xception")
            self.add_pipeline(f"{family} → xception", run_dir, seconds, val_images, params)
            if family == "edsr":
                edsr_total = den_seconds + seconds
                if self.has_time("joint edsr + xception"):
                    joint = self.experiment("joint-edsr", "xception", v1, denoiser=str(den_dir), joint=True)
                    run_dir, seconds = self.train(joint, work / "joint-edsr")
                    self.add_pipeline("joint edsr + xception", run_dir, seconds, val_images)
        if edsr_total is not None and self.has_time("xception, same wall-clock as edsr → xception"):
            spec = self.experiment("xception-same-time", "xception", v1, epochs=10_000)
            run_dir, seconds = self.train(spec, work / "xception-same-time", deadline=time.monotonic() + edsr_total)
            self.add_pipeline(f"xception, {edsr_total:.0f} s (as edsr → xception)", run_dir, seconds, val_images)

    # -- output ---------------------------------------------------------------------------------
    def write(self, done: bool = False) -> None:
        from galparam.io import write_text_atomic
        from galparam.tables import markdown_table

        out = self.args.output
        out.mkdir(parents=True, exist_ok=True)
        pipelines, denoisers = pd.DataFrame(self.pipelines), pd.DataFrame(self.denoisers)
        write_text_atomic(out / "pipelines.csv", pipelines.to_csv(index=False, float_format="%.6g"))
        write_text_atomic(out / "denoisers.csv", denoisers.to_csv(index=False, float_format="%.6g"))
        status = {
            "images": self.images,
            "epochs": self.epochs,
            "batch_size": self.args.batch_size,
            "elapsed_s": round(time.monotonic() - self.start, 1),
            "environment": self.env,
            "running": not done,
            "not_finished": self.unfinished,
        }
        write_text_atomic(out / "status.json", json.dumps(status, indent=2) + "\n")
        env = self.env
        lines = [
            "# Denoise, then measure (galparam benchmark)",
            "",
            f"Keras {env['keras']} on {env['backend']} ({', '.join(env.get('devices', []))}); {env['cores']} cores; "
            f"{self.images:,} images a set (10 % validate), {self.epochs} epochs each, batch {self.args.batch_size}; "
            f"{status['elapsed_s']} s.",
            "",
            "## Pipelines: validation RMSE, size, training time, inference",
            "",
            markdown_table(pipelines) if len(pipelines) else "(none yet)",
            "## Denoisers on their validation images (counts, dB)",
            "",
            markdown_table(denoisers) if len(denoisers) else "(none yet)",
            "## Not finished",
            "",
            *[f"- {s}" for s in self.unfinished],
            "Still running: the tables of the steps done so far." if not done else "",
        ]
        write_text_atomic(out / "denoise.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = Benchmark(args)
    signal.signal(signal.SIGTERM, _terminate)
    bench.say(f"denoising benchmark, backend {bench.env['backend']} {bench.env.get('devices', '')}")
    work = args.work or Path(tempfile.mkdtemp(prefix="galparam-bench-denoise-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench.run(work)
    except Terminated:
        bench.unfinished.append("stopped by SIGTERM")
        return 143
    finally:
        bench.write(done=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        bench.say(f"wrote {args.output}/denoise.md")
    print((args.output / "denoise.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
