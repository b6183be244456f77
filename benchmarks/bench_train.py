"""Training and inference throughput, and accuracy at CPU scale (issue 3).

    python benchmarks/bench_train.py                     # all three parts
    python benchmarks/bench_train.py --skip-accuracy     # throughput only (minutes)

1. Training throughput of the default Xception (109,304 parameters) fed by galparam's ``tf.data``
   pipeline (memory-mapped npz, per-epoch seeded shuffling, prefetching) against the same model
   fed from in-memory arrays, same weights, same images, alternating runs; the median ratio.
   Target: the pipeline reaches ≥ 90 % of the in-memory rate.
2. Inference throughput (``Estimator.predict``, batches of 256) of the default model and of
   cheaper variants. Target ≥ 500 images/s on this machine.
3. Memory at full scale: a 200,000-image dataset (v1-20k tiled ten times, 6.6 GB of images) in a
   fresh process: memory-mapped loading with all checks, scalers, adapting, 300 training steps
   through the pipeline over all 180,000 training images, and prediction of the 20,000 validation
   images. Peak resident memory, and its anonymous part (what cannot be dropped: the file's
   pages are cache). Target ≤ 8 GiB.
   1b. On-the-fly training: the same model trained on fresh v1 images drawn each epoch from
   ``data/v1.yaml`` against the same training from the v1-20k file. Target ≥ 90 % of the file's rate.
4. Accuracy: ``galparam-train experiments/xception-v1-small.yaml`` (20,000 v1 images), validation
   RMSE per label beside the reference's full-scale (200,000 images, GPU) noisy-v1 figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from galparam.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_RMSE_NOISY_V1 = {"flux": 5913, "sersic_n": 0.780, "hlr": 0.0462, "g1": 0.0737, "g2": 0.0735}
VARIANTS = {
    "default (16, 64, 8 blocks, stride 2)": {},
    "8 blocks -> 4": {"num_residual_blocks": 4},
    "kernel 5 -> 3": {"kernel_size": 3},
    "stride 2 -> 4": {"initial_strides": 4},
    "sep 64 -> 32, 4 blocks": {"sep_num_filters": 32, "num_residual_blocks": 4},
}


def _ensure_dataset(name: str) -> Path:
    path = ROOT / "data" / f"{name}.npz"
    if not path.exists():
        subprocess.run(
            [sys.executable, "-m", "galparam.cli.simulate", str(ROOT / "data" / f"{name}.yaml"), "-o", str(path)],
            check=True,
        )
    return path


def training_throughput(path: Path, n_images: int, repeats: int) -> list[dict]:
    import keras

    from galparam.data import MinMaxScaler, load_dataset, with_channel
    from galparam.models.xception import build_xception
    from galparam.pipelines import tf_dataset

    ds = load_dataset(path, mmap=True)
    idx = np.arange(n_images)
    scaler = MinMaxScaler((-1, 1)).fit(ds.label[idx])
    x, y = with_channel(ds.img[idx]), scaler.transform(ds.label[idx])
    keras.utils.set_random_seed(0)
    model = build_xception()
    model.get_layer("normalize_image").adapt(x[:2000])
    model.compile(optimizer="adam", loss="mse")
    start_weights = model.get_weights()
    columns = {"image": (ds.img, with_channel), "labels": (ds.label, scaler.transform)}
    steps = int(np.ceil(n_images / 32))
    rows = []

    def timed(feed):
        model.set_weights(start_weights)
        t = time.perf_counter()
        feed()
        return n_images / (time.perf_counter() - t)

    # Warm up both paths (graph tracing) on a few batches first.
    model.fit(x[:320], y[:320], batch_size=32, epochs=1, verbose=0)
    model.fit(tf_dataset(columns, "image", "labels", idx[:320], 32, shuffle_seed=0), steps_per_epoch=10, verbose=0)
    for r in range(repeats):
        mem = timed(lambda: model.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0))
        pipe = timed(
            lambda r=r: model.fit(
                tf_dataset(columns, "image", "labels", idx, 32, shuffle_seed=r), steps_per_epoch=steps, verbose=0
            )
        )
        rows.append({"repeat": r, "in_memory": mem, "pipeline": pipe, "ratio": pipe / mem})
        print(f"  repeat {r}: in-memory {mem:.1f} images/s, pipeline {pipe:.1f} images/s", flush=True)
    return rows


def fresh_vs_file(path: Path, spec_path: Path, n_images: int, epochs: int) -> dict:
    """Images/s of the default Xception trained from the dataset file (galparam's pipeline) and on
    fresh images drawn on the fly from its spec (:mod:`galparam.fresh`), same start weights; each
    the median epoch after the first (tracing, the drawing process's start-up)."""
    import keras

    from galparam.data import MinMaxScaler, load_dataset, with_channel
    from galparam.fresh import FreshImages
    from galparam.models.xception import build_xception
    from galparam.pipelines import tf_dataset, tf_generator_dataset
    from galparam.specs import load_spec

    ds = load_dataset(path, mmap=True)
    idx = np.arange(n_images)
    scaler = MinMaxScaler((-1, 1)).fit(ds.label[idx])
    keras.utils.set_random_seed(0)
    model = build_xception()
    model.get_layer("normalize_image").adapt(with_channel(ds.img[:2000]))
    model.compile(optimizer="adam", loss="mse")
    start_weights = model.get_weights()
    steps = int(np.ceil(n_images / 32))

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.t)

    def rate(dataset):
        model.set_weights(start_weights)
        clock = Clock()
        clock.seconds = []
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, callbacks=[clock], verbose=0)
        return n_images / float(np.median(clock.seconds[1:]))

    columns = {"image": (ds.img, with_channel), "labels": (ds.label, scaler.transform)}
    from_file = rate(tf_dataset(columns, "image", "labels", idx, 32, shuffle_seed=0))
    fresh_columns = {"image": ("img", with_channel), "labels": ("label", scaler.transform)}
    shapes = [(*ds.img.shape[1:], 1), (5,)]
    with FreshImages(load_spec(spec_path), n_images, 32) as fresh:
        on_the_fly = rate(tf_generator_dataset(lambda: fresh.batches(fresh_columns), shapes, "image", "labels"))
    return {"file": from_file, "on_the_fly": on_the_fly, "ratio": on_the_fly / from_file}


def inference_throughput(path: Path, n_images: int) -> list[dict]:
    import keras

    from galparam.data import MinMaxScaler, load_dataset
    from galparam.estimator import Estimator
    from galparam.models.xception import build_xception

    ds = load_dataset(path, mmap=True)
    images = np.asarray(ds.img[:n_images])
    scaler = MinMaxScaler((-1, 1)).fit(ds.label[:n_images])
    rows = []
    for name, args in VARIANTS.items():
        keras.utils.set_random_seed(0)
        model = build_xception(**args)
        estimator = Estimator(model, "xception", scaler)
        estimator.predict(images[:512])  # trace
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            estimator.predict(images)
            rates.append(n_images / (time.perf_counter() - t))
        rows.append({"model": name, "parameters": model.count_params(), "images_per_s": float(np.median(rates))})
        print(f"  {name}: {rows[-1]['images_per_s']:.0f} images/s", flush=True)
    return rows


MEMORY_CHILD = """
import resource, sys, threading, time
import numpy as np
from galparam.data import MinMaxScaler, load_dataset, split_indices, with_channel
from galparam.estimator import Estimator
from galparam.models.xception import build_xception
from galparam.pipelines import tf_dataset

peak_anon = 0
def sample():
    global peak_anon
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak_anon = max(peak_anon, int(line.split()[1]))
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
ds = load_dataset(sys.argv[1], mmap=True)
train, val = split_indices(len(ds), 0.1)
scaler = MinMaxScaler((-1, 1)).fit(ds.label[train])
model = build_xception()
model.get_layer("normalize_image").adapt(with_channel(ds.img[np.linspace(0, train[-1], 10000).astype(int)]))
model.compile(optimizer="adam", loss="mse")
columns = {"image": (ds.img, with_channel), "labels": (ds.label, scaler.transform)}
model.fit(tf_dataset(columns, "image", "labels", train, 32, shuffle_seed=0), steps_per_epoch=300, verbose=0)
Estimator(model, "xception", scaler).predict(ds.img[val])
time.sleep(0.5)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, peak_anon / 2**20)
"""


def memory_at_scale(source: Path, copies: int = 10) -> dict:
    from galparam.data import load_dataset
    from galparam.io import NpzWriter

    ds = load_dataset(source, mmap=True)
    n = len(ds) * copies
    with tempfile.TemporaryDirectory(dir=ROOT / "bench-results") as tmp:
        path = Path(tmp) / "tiled.npz"
        with NpzWriter(path) as w:
            for key in ("img", "img_nonoise"):
                w.begin(key, (n, *ds.img.shape[1:]), np.float32)
                for _ in range(copies):
                    for start in range(0, len(ds), 5000):
                        w.write(getattr(ds, key)[start : start + 5000])
            w.add("psf_img", ds.psf_img)
            w.add("label", np.tile(ds.label, (copies, 1)))
            for key in ("snr", "sigma", "psf_fwhm"):
                w.add(key, np.tile(getattr(ds, key), copies))
            w.add("label_names", np.array(["flux", "sersic_n", "hlr", "g1", "g2"]))
            w.add("spec", np.array(ds.spec.to_yaml()))
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(path)], check=True, capture_output=True, text=True
        ).stdout.split()
        return {
            "images": n,
            "file_gib": path.stat().st_size / 2**30,
            "peak_rss_gib": float(out[-2]),
            "peak_anon_gib": float(out[-1]),
            "seconds": time.perf_counter() - t,
        }


def accuracy(spec_path: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "galparam.cli.train", str(spec_path), "-o", str(run), "-q"], check=True)
        seconds = time.perf_counter() - t
        folder = RunFolder(run)
        metrics = json.loads(folder.metrics_path.read_text())
        info = folder.info()
    return {"seconds": seconds, "metrics": metrics, "info": info}


def throughput(path: Path, args) -> None:
    print("1. training throughput, default Xception, batch 32:")
    rows = training_throughput(path, args.train_images, args.repeats)
    print("\n| feed | images/s (median) | vs in-memory |\n|---|---|---|")
    mem = np.median([r["in_memory"] for r in rows])
    pipe = np.median([r["pipeline"] for r in rows])
    ratio = np.median([r["ratio"] for r in rows])
    verdict = "met" if ratio >= 0.9 else "NOT met"
    print(f"| in-memory arrays | {mem:.1f} | 1.00 |")
    print(f"| galparam tf.data pipeline | {pipe:.1f} | {ratio:.2f} (target >= 0.90: {verdict}) |")

    print(f"\n1b. on-the-fly training: fresh v1 images each epoch vs the v1-20k file ({args.fly_epochs} epochs):")
    f = fresh_vs_file(path, ROOT / "data" / "v1.yaml", args.fly_images, args.fly_epochs)
    verdict = "met" if f["ratio"] >= 0.9 else "NOT met"
    print("\n| feed | images/s (median epoch after the first) | vs file |\n|---|---|---|")
    print(f"| dataset file (tf.data pipeline) | {f['file']:.1f} | 1.00 |")
    print(f"| fresh images on the fly | {f['on_the_fly']:.1f} | {f['ratio']:.2f} (target >= 0.90: {verdict}) |")

    print("\n2. inference throughput (Estimator.predict, batch 256):")
    rows = inference_throughput(path, args.inference_images)
    print("\n| model | parameters | images/s | vs target 500 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters']:,} | {r['images_per_s']:.0f} | {r['images_per_s'] / 500:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=3200, help="images per timed training epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inference-images", type=int, default=4096)
    parser.add_argument("--fly-images", type=int, default=2048, help="images per epoch of the on-the-fly comparison")
    parser.add_argument("--fly-epochs", type=int, default=4)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--experiments",
        nargs="+",
        default=[str(ROOT / "experiments" / f"{n}.yaml") for n in ("xception-v1-small", "xception-v1-small-fast")],
        help="experiments whose validation RMSE is compared with the reference",
    )
    args = parser.parse_args(argv)
    path = _ensure_dataset("v1-20k")

    if not args.skip_throughput:
        throughput(path, args)

    if not args.skip_memory:
        print("\n3. memory at full scale (200,000 images):")
        m = memory_at_scale(path)
        print("\n| dataset | file | peak RSS | of which anonymous | target |\n|---|---|---|---|---|")
        verdict = "met" if m["peak_rss_gib"] <= 8 else "NOT met"
        print(
            f"| {m['images']:,} images | {m['file_gib']:.1f} GiB | {m['peak_rss_gib']:.2f} GiB | "
            f"{m['peak_anon_gib']:.2f} GiB | <= 8 GiB: {verdict} |"
        )

    if not args.skip_accuracy:
        print("\n4. accuracy")
        results = {}
        for experiment in args.experiments:
            print(f"  galparam-train {experiment}", flush=True)
            results[Path(experiment).stem] = accuracy(Path(experiment))
        print("\n| experiment | train / validation images | epochs | minutes | parameters |\n|---|---|---|---|---|")
        for name, r in results.items():
            info = r["info"]
            print(
                f"| {name} | {info['dataset']['train']:,} / {info['dataset']['validation']:,} | "
                f"{info['stages']['xception']['epochs']} | {r['seconds'] / 60:.1f} | {info['parameters']:,} |"
            )
        names = list(results)
        print("\n| label | reference RMSE (200k, GPU) | " + " | ".join(f"{n} RMSE (ratio)" for n in names) + " |")
        print("|---|---|" + "---|" * len(names))
        for label, ref in REFERENCE_RMSE_NOISY_V1.items():
            cells = [results[n]["metrics"]["labels"][label]["rmse"] for n in names]
            print(f"| {label} | {ref:.4g} | " + " | ".join(f"{c:.4g} ({c / ref:.2f})" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
