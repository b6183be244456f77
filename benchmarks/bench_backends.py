"""Keras on JAX beside Keras on TensorFlow, on this machine's CPU (issue 16).

    python benchmarks/bench_backends.py [--images 512] [--repeats 2]

Each backend runs in its own process (Keras picks its backend once per process), on the same
images of the v1-20k set (simulated first if missing), one after the other:

- training: images/s of the default Xception (109,304 parameters) fed by galparam's pipeline for
  that backend (``tf.data`` on TensorFlow, ``keras.utils.PyDataset`` on JAX), one epoch of
  ``--images`` images after a warm-up epoch, the median of ``--repeats`` epochs;
- prediction: images/s of ``model.predict`` in batches of 256 over the same images (median);
- renderer: images/s of the ``keras.ops`` k-space renderer compiled for that backend
  (``tf.function(jit_compile=True)`` or ``jax.jit``), float32, batches of 256 v1-prior galaxies,
  beside the numpy renderer that makes the datasets (the same in both processes).

The table gives each figure and the ratio JAX / TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _median_rate(images: int, run, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - t))
    return float(np.median(rates))


def measure(images: int, repeats: int) -> dict:
    """This process's figures (its backend is ``KERAS_BACKEND``)."""
    import keras

    from galparam import backend
    from galparam.data import MinMaxScaler, load_dataset, with_channel
    from galparam.kspace import KerasRenderer
    from galparam.models.xception import build_xception
    from galparam.pipelines import batches
    from galparam.render import KSpaceRenderer

    ds = load_dataset(ROOT / "data" / "v1-20k.npz", mmap=True)
    # the renderers first, before the models' threads are busy
    theta = [ds.label[:256, i].astype(np.float64) for i in range(5)]
    fwhm = float(ds.psf_fwhm[0])
    renderer = KSpaceRenderer()
    renderer.images(*theta, fwhm)
    numpy_rendering = _median_rate(256, lambda: renderer.images(*theta, fwhm), 5)
    keras_renderer = KerasRenderer(renderer.tables, dtype="float32", jit=True)
    args = [np.float32(v) for v in theta]
    keras.ops.convert_to_numpy(keras_renderer(*args, fwhm))  # compiles each group's shape
    rendering = _median_rate(256, lambda: keras.ops.convert_to_numpy(keras_renderer(*args, fwhm)), 5)
    idx = np.arange(images)
    scaler = MinMaxScaler((-1, 1)).fit(ds.label[idx])
    keras.utils.set_random_seed(0)
    model = build_xception()
    model.get_layer("normalize_image").adapt(with_channel(ds.img[:2000]))
    model.compile(optimizer="adam", loss="mse")
    columns = {"image": (ds.img, with_channel), "labels": (ds.label, scaler.transform)}
    steps = int(np.ceil(images / 32))
    epoch = {"n": 0}

    def one_epoch():
        pipeline = batches(columns, "image", "labels", idx, 32, shuffle_seed=epoch["n"])
        extra = {"callbacks": pipeline.callbacks} if hasattr(pipeline, "callbacks") else {}
        model.fit(pipeline, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, **extra)
        epoch["n"] += 1

    one_epoch()  # compiles
    training = _median_rate(images, one_epoch, repeats)
    x = with_channel(ds.img[:images])
    model.predict(x[:256], batch_size=256, verbose=0)
    prediction = _median_rate(images, lambda: model.predict(x, batch_size=256, verbose=0), repeats)

    return {
        "backend": backend.name(),
        "training images/s": training,
        "prediction images/s": prediction,
        "keras.ops renderer images/s": rendering,
        "numpy renderer images/s": numpy_rendering,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=512, help="images an epoch and predicted (default 512)")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs and predictions (default 2)")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.images, args.repeats)))
        return 0
    if not (ROOT / "data" / "v1-20k.npz").exists():
        subprocess.run([sys.executable, "-m", "galparam.cli.simulate", str(ROOT / "data" / "v1-20k.yaml")], check=True)
    results = {}
    for name in ("tensorflow", "jax"):
        print(f"measuring Keras on {name} ...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--measure", "--images", str(args.images), "--repeats", str(args.repeats)],
            env={**os.environ, "KERAS_BACKEND": name},
            capture_output=True,
            text=True,
            check=True,
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print()
    print(
        f"Keras on JAX vs TensorFlow, CPU ({os.cpu_count()} cores), {args.images} v1 images, median of {args.repeats}"
    )
    print("| figure | TensorFlow | JAX | JAX / TensorFlow |")
    print("| --- | --- | --- | --- |")
    for key in results["tensorflow"]:
        if key == "backend":
            continue
        tf_value, jax_value = results["tensorflow"][key], results["jax"][key]
        print(f"| {key} | {tf_value:,.0f} | {jax_value:,.0f} | {jax_value / tf_value:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
