"""The device paths beside the numpy paths, in one run on this machine (issue 27).

    KERAS_BACKEND=jax python benchmarks/bench_device.py [--fits 200] [--bounds 2000] [--draws 20000]

On Keras's JAX backend (set here unless ``KERAS_BACKEND`` says otherwise), each figure beside
its numpy or Keras counterpart, measured in this process one after the other; a device path's
first call compiles, so each is timed on a second call and its compile time given apart:

- fits: :class:`~galparam.evaluate.device_fit.DeviceFit` beside
  :class:`~galparam.evaluate.fit.BatchedFit` on the first ``--fits`` images of each test set
  (SNR 60 and 30, simulated here), seconds an image, and their largest disagreement in units of
  the bound and in NLL;
- bounds: :func:`~galparam.evaluate.device_fit.device_bounds` beside
  :func:`~galparam.evaluate.crb.batch_bounds`, ``--bounds`` v2-prior galaxies;
- prediction: :func:`galparam.backend.predict` (every batch in one compiled loop) beside Keras's
  ``model.predict``, the v2 Xception (untrained, its default size) on ``--predict`` images;
- drawing: :class:`~galparam.device_draw.DeviceDrawer` beside the numpy path's
  :func:`galparam.fresh.draw` (one process), v2 images/s; and, on ``--draws`` galaxies of each,
  the two-sample Kolmogorov–Smirnov p-value of every drawn parameter and of the SNR.

On a GPU the same script gives the device figures; the targets (H100/H200) are in the issue:
training ≥ 40,000 fresh images/s, prediction ≥ 20,000 images/s, bounds and fits ≥ 2,000/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def compare_fits(row, ds) -> None:
    """DeviceFit beside BatchedFit on a test set's images: one row of the table."""
    from galparam.evaluate.crb import batch_bounds
    from galparam.evaluate.device_fit import DeviceFit
    from galparam.evaluate.fit import BatchedFit
    from galparam.evaluate.fitbox import FitBox

    images, sigma, box = ds.img.astype(np.float64), ds.sigma, FitBox.from_spec(ds.spec)
    reference, reference_s = timed(lambda: BatchedFit(box=box).fit(images, 0.5, sigma))
    device = DeviceFit(box=box)
    _, compile_s = timed(lambda: device.fit(images, 0.5, sigma))
    _, device_s = timed(lambda: device.fit(images, 0.5, sigma))
    bound = np.sqrt(np.diagonal(batch_bounds(ds.label.astype(np.float64), 0.5, sigma), axis1=1, axis2=2))
    worst = float((np.abs(device.theta_ - reference.theta_) / bound).max())
    nll = float(np.abs(device.nll_ - reference.nll_).max())
    snr = int(ds.spec.name.split("snr")[-1]) if "snr" in ds.spec.name else ds.spec.name
    row(
        f"fits, SNR {snr} test set ({len(ds)})",
        device_s,
        reference_s,
        len(ds),
        "BatchedFit (numpy, threads)",
        f"first call {compile_s:.0f} s; max |Δθ| {worst:.3f} bound, max |ΔNLL| {nll:.1e}",
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fits", type=int, default=200, help="test images fitted per test set (default 200)")
    p.add_argument("--bounds", type=int, default=2000, help="galaxies bounded (default 2000)")
    p.add_argument("--draws", type=int, default=20_000, help="galaxies drawn by each path for the KS tests")
    p.add_argument("--predict", type=int, default=1024, help="images predicted (default 1024)")
    args = p.parse_args(argv)
    for name in ("fits", "bounds", "draws", "predict"):
        if getattr(args, name) < 8:
            p.error(f"--{name} {getattr(args, name)}: a whole number >= 8 is accepted")

    import jax
    import jax.numpy as jnp
    from scipy.stats import ks_2samp

    from galparam import backend
    from galparam.data import load_dataset
    from galparam.device_draw import DeviceDrawer
    from galparam.evaluate.crb import batch_bounds
    from galparam.evaluate.device_fit import device_bounds
    from galparam.fresh import draw
    from galparam.parameters import LABEL_NAMES
    from galparam.simulate import simulate
    from galparam.specs import load_spec
    from galparam.tables import markdown_table

    if backend.name() != "jax":
        p.error(f"the device paths run on Keras's JAX backend; this process uses {backend.name()}")
    rows = []

    def row(what, device_s, reference_s, count, reference, note=""):
        rows.append(
            {
                "what": what,
                "device path /s": round(count / device_s, 1),
                "reference": reference,
                "reference /s": round(count / reference_s, 1),
                "device / reference": round(reference_s / device_s, 2),
                "note": note,
            }
        )
        print(f"{what}: {count / device_s:,.1f}/s beside {count / reference_s:,.1f}/s ({reference}) {note}", flush=True)

    print(f"devices: {jax.devices()}, cores: {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # fits
        for snr in (60, 30):
            spec = load_spec(ROOT / "data" / f"test_snr{snr}.yaml").with_overrides(size=args.fits)
            compare_fits(row, load_dataset(simulate(spec, Path(tmp) / f"t{snr}.npz", jobs=2, progress=False).output))
        # bounds
        rng = np.random.default_rng(1)
        B = args.bounds
        theta = np.column_stack(
            [
                rng.uniform(3e4, 4e5, B),
                rng.uniform(0.5, 6.0, B),
                rng.uniform(0.1, 0.6, B),
                rng.uniform(-0.45, 0.45, B),
                rng.uniform(-0.45, 0.45, B),
            ]
        )
        sigma = rng.uniform(200, 400, B)
        reference, reference_s = timed(lambda: batch_bounds(theta, 0.5, sigma))
        _, compile_s = timed(lambda: device_bounds(theta, 0.5, sigma))
        device, device_s = timed(lambda: device_bounds(theta, 0.5, sigma))
        std, std_ref = (np.sqrt(np.diagonal(c, axis1=1, axis2=2)) for c in (device, reference))
        row(
            f"bounds, v2 prior ({B})",
            device_s,
            reference_s,
            B,
            "batch_bounds (numpy)",
            f"first call {compile_s:.0f} s; max relative Δσ {float(np.nanmax(np.abs(std / std_ref - 1))):.1e}",
        )
        # prediction
        from galparam.models.xception import build_xception

        model = build_xception()
        images = rng.normal(0, 1, (args.predict, 64, 64, 1)).astype(np.float32)
        _, compile_s = timed(lambda: backend.predict(model, images))
        _, device_s = timed(lambda: backend.predict(model, images))
        model.predict(images[:256], batch_size=256, verbose=0)
        _, reference_s = timed(lambda: model.predict(images, batch_size=256, verbose=0))
        row(
            f"prediction, v2 Xception ({args.predict:,})",
            device_s,
            reference_s,
            args.predict,
            "model.predict, batches of 256",
            f"first call (compiles) {compile_s:.0f} s",
        )
        # drawing, and the distributions
        v2 = load_spec(ROOT / "data" / "v2.yaml")
        drawer = DeviceDrawer(v2, v2.seed)
        fn = jax.jit(drawer.draw)
        index = jnp.arange(512, dtype=jnp.int32)
        _, compile_s = timed(lambda: jax.block_until_ready(fn(0, index)))
        _, device_s = timed(lambda: jax.block_until_ready(fn(1, index)))
        _, reference_s = timed(lambda: draw(v2.with_overrides(size=512), 0, 512))
        row(
            "fresh v2 images (512)",
            device_s,
            reference_s,
            512,
            "galparam.fresh.draw (numpy, one process)",
            f"first call (compiles) {compile_s:.0f} s",
        )
        spec = v2.with_overrides(size=args.draws, seed=5)
        ds = load_dataset(simulate(spec, Path(tmp) / "v2.npz", jobs=2, progress=False).output)
        drawn = []
        for start in range(0, args.draws, 1024):
            out = fn(0, jnp.arange(start, min(start + 1024, args.draws), dtype=jnp.int32))
            drawn.append({k: np.asarray(out[k]) for k in ("label", "snr", "sigma")})
        device = {k: np.concatenate([d[k] for d in drawn]) for k in drawn[0]}
        pvalues = {name: ks_2samp(ds.label[:, j], device["label"][:, j]).pvalue for j, name in enumerate(LABEL_NAMES)}
        pvalues["sigma"] = ks_2samp(ds.sigma, device["sigma"]).pvalue
        pvalues["snr"] = ks_2samp(ds.snr, device["snr"]).pvalue
    print()
    print(markdown_table(pd.DataFrame(rows)))
    print()
    print(f"Two-sample KS p-values, {args.draws:,} v2 galaxies drawn by each path (numpy dataset, device):")
    print(markdown_table(pd.DataFrame([{k: f"{v:.3f}" for k, v in pvalues.items()}])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
