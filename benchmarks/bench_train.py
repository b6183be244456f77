"""Training and inference throughput, and accuracy at CPU scale (issue 3).

    python benchmarks/bench_train.py                     # all three parts
    python benchmarks/bench_train.py --skip-accuracy     # throughput only (minutes)

1. Training throughput of the default Xception (109,304 parameters) fed by galparam's ``tf.data``
   pipeline (memory-mapped npz, per-epoch seeded shuffling, prefetching) against the same model
   fed from in-memory arrays, same weights, same images, alternating runs; the median ratio.
   Target: the pipeline reaches ≥ 90 % of the in-memory rate.
2. Inference throughput (``Estimator.predict``, batches of 256) of the default model and of
   cheaper variants. Target ≥ 500 images/s on this machine.
3. Accuracy: ``galparam-train experiments/xception-v1-small.yaml`` (20,000 v1 images), validation
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

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_RMSE_NOISY_V1 = {"flux": 5913, "sersic_n": 0.780, "hlr": 0.0462, "g1": 0.0737, "g2": 0.0735}
VARIANTS = {
    "default (16, 64, 8 blocks, stride 2)": {},
    "8 blocks -> 4": {"num_residual_blocks": 4},
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

    from galparam.data import MinMaxScaler, load_dataset, tf_dataset, with_channel
    from galparam.models.xception import build_xception

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


def accuracy(spec_path: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "galparam.cli.train", str(spec_path), "-o", str(run), "-q"], check=True)
        seconds = time.perf_counter() - t
        metrics = json.loads((run / "metrics.json").read_text())
        info = json.loads((run / "run.json").read_text())
    return {"seconds": seconds, "metrics": metrics, "info": info}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=3200, help="images per timed training epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inference-images", type=int, default=4096)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "xception-v1-small.yaml"))
    args = parser.parse_args(argv)
    path = _ensure_dataset("v1-20k")

    print("1. training throughput, default Xception, batch 32:")
    rows = training_throughput(path, args.train_images, args.repeats)
    print("\n| feed | images/s (median) | vs in-memory |\n|---|---|---|")
    mem = np.median([r["in_memory"] for r in rows])
    pipe = np.median([r["pipeline"] for r in rows])
    ratio = np.median([r["ratio"] for r in rows])
    print(f"| in-memory arrays | {mem:.1f} | 1.00 |")
    print(
        f"| galparam tf.data pipeline | {pipe:.1f} | {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'}) |"
    )

    print("\n2. inference throughput (Estimator.predict, batch 256):")
    rows = inference_throughput(path, args.inference_images)
    print("\n| model | parameters | images/s | vs target 500 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters']:,} | {r['images_per_s']:.0f} | {r['images_per_s'] / 500:.2f} |")

    if not args.skip_accuracy:
        print(f"\n3. accuracy: galparam-train {args.experiment}")
        result = accuracy(Path(args.experiment))
        info, metrics = result["info"], result["metrics"]["labels"]
        epochs = info["stages"]["xception"]["epochs"]
        print(
            f"\n{info['dataset']['train']:,} training / {info['dataset']['validation']:,} validation images, "
            f"{epochs} epochs, {result['seconds'] / 60:.1f} min\n"
        )
        print("| label | RMSE (galparam, 20k images, CPU) | RMSE (reference, 200k, GPU) | ratio | explained variance |")
        print("|---|---|---|---|---|")
        for name, ref in REFERENCE_RMSE_NOISY_V1.items():
            m = metrics[name]
            print(f"| {name} | {m['rmse']:.4g} | {ref:.4g} | {m['rmse'] / ref:.2f} | {m['explained_variance']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
