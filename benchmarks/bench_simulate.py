"""Simulation throughput: the k-space renderer against GalSim's drawImage and a naive GalSim loop,
measured in the same run.

    python benchmarks/bench_simulate.py                  # v1 and v3 at 200,000 images
    python benchmarks/bench_simulate.py --sizes 20000    # quicker

galparam: ``simulate`` with ``--jobs`` workers (default 2), written to a temporary folder, with the
k-space renderer (the default) on v1 and v3 at each size, and with ``renderer: galsim`` on v1 at
``--galsim-images``. Naive reference: one process, a continuous Sérsic index (a new GalSim profile
for every candidate, so GalSim's cache never helps), one draw per candidate, the same priors, SNR
window and noise. Also the k-space tables: build time per index, file size, load time.
Targets (issue 12): v1 at 200,000 images >= 1,000 images/s and >= 100x the naive loop; v3 within
20 % of v1; peak memory <= 8 GiB.

Survey-like specs (issue 25), drawn with the stamp model: ``data/sdss-like.yaml`` (64² of 0.396″,
three SDSS PSF images) and ``data/hst-like.yaml`` (64² of 0.03″, three HST/ACS PSF images), galaxies
off-centre on a sky, at ``--survey-images`` each. Target: >= 500 images/s with --jobs 2.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import galsim
import numpy as np
import pandas as pd

from galparam.simulate import simulate
from galparam.specs import load_spec

ROOT = Path(__file__).resolve().parents[1]


def naive_rate(spec, n_images: int, seed: int = 0) -> float:
    """Images per second of the naive loop (accepted images only)."""
    rng = np.random.default_rng(seed)
    p = spec.priors
    psf = galsim.Moffat(beta=spec.geometry.psf_beta, fwhm=p["psf_fwhm"].low)
    lo, hi = spec.snr_window
    accepted = 0
    t0 = time.perf_counter()
    while accepted < n_images:
        flux = rng.uniform(p["flux"].low, p["flux"].high)
        n = rng.uniform(p["sersic_n"].low, p["sersic_n"].high)
        hlr = rng.uniform(p["hlr"].low, p["hlr"].high)
        a = rng.uniform(p["shear_amplitude"].low, p["shear_amplitude"].high)
        beta = rng.uniform(p["shear_angle"].low, p["shear_angle"].high)
        sigma = p["sigma"].low
        galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(
            g1=a * np.cos(2 * beta), g2=a * np.sin(2 * beta)
        )
        image = (
            galsim.Convolve(galaxy, psf)
            .drawImage(nx=spec.geometry.stamp_size, ny=spec.geometry.stamp_size, scale=spec.geometry.pixel_scale)
            .array
        )
        snr = np.sqrt(np.sum(image.astype(np.float64) ** 2)) / sigma
        if lo <= snr <= hi:
            noisy = rng.poisson(np.clip(image, 0, None)) + rng.normal(0, sigma, image.shape)
            accepted += 1
            del noisy
    return n_images / (time.perf_counter() - t0)


def peak_rss_gib() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, GiB."""
    to_gib = 1024**-2  # ru_maxrss is in KiB on Linux
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_gib,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_gib,
    )


def table_figures() -> dict:
    """Build the k-space tables into a temporary cache folder and load them back: seconds and bytes."""
    import os

    from galparam import kspace

    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get(kspace.CACHE_ENV)
        os.environ[kspace.CACHE_ENV] = tmp
        try:
            kspace.cache._LOADED.clear()
            t0 = time.perf_counter()
            tables = kspace.load_tables()
            total = time.perf_counter() - t0
            path = kspace.cache_path(kspace.table_settings())
            kspace.cache._LOADED.clear()
            t0 = time.perf_counter()
            kspace.load_tables().coefficients(np.float32)
            load = time.perf_counter() - t0
            size = path.stat().st_size
        finally:
            kspace.cache._LOADED.clear()
            if old is None:
                os.environ.pop(kspace.CACHE_ENV)
            else:
                os.environ[kspace.CACHE_ENV] = old
    per_index = np.array(list(tables.build_seconds.values()))
    return {
        "indices": len(per_index),
        "per index ms (median, max)": f"{1e3 * np.median(per_index):.0f}, {1e3 * per_index.max():.0f}",
        "build incl. grid rule s": round(total, 1),
        "file MB": round(size / 1e6, 2),
        "load incl. spline coefficients s": round(load, 2),
    }


def run_simulation(spec, size: int, jobs: int, label: str) -> dict:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        summary = simulate(spec.with_overrides(size=size), Path(tmp) / "out.npz", jobs=jobs, progress=True)
        file_gib = summary.output.stat().st_size / 1024**3
    self_gib, child_gib = peak_rss_gib()
    return {
        "method": label,
        "images": size,
        "seconds": summary.seconds,
        "images/s": summary.images_per_second,
        "rejection": f"{summary.rejection_rate:.1%}",
        "peak RSS main GiB": round(self_gib, 2),
        "peak RSS worker GiB": round(child_gib, 2),
        "file GiB": round(file_gib, 2),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[200_000])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--naive-images", type=int, default=60)
    p.add_argument("--galsim-images", type=int, default=4000)
    p.add_argument("--survey-images", type=int, default=40_000)
    args = p.parse_args(argv)
    v1 = load_spec(ROOT / "data" / "v1.yaml")
    v3 = load_spec(ROOT / "data" / "v3.yaml")

    print("k-space tables: building into a temporary cache ...", flush=True)
    tables = table_figures()
    print(f"naive reference: {args.naive_images} images ...", flush=True)
    naive = naive_rate(v1, args.naive_images)
    rows = [
        {
            "method": "naive GalSim loop (1 process)",
            "images": args.naive_images,
            "seconds": args.naive_images / naive,
            "images/s": naive,
        }
    ]
    rows.append(
        run_simulation(
            replace(v1, renderer="galsim"), args.galsim_images, args.jobs, f"v1, renderer galsim, --jobs {args.jobs}"
        )
    )
    for size in args.sizes:
        rows.append(run_simulation(v1, size, args.jobs, f"v1, renderer kspace, --jobs {args.jobs}"))
        rows.append(run_simulation(v3, size, args.jobs, f"v3, renderer kspace, --jobs {args.jobs}"))
    for name in ("sdss-like", "hst-like"):
        spec = load_spec(ROOT / "data" / f"{name}.yaml")
        rows.append(run_simulation(spec, args.survey_images, args.jobs, f"{name}, PSF images, --jobs {args.jobs}"))
    table = pd.DataFrame(rows)
    table["vs naive"] = (table["images/s"] / naive).map(lambda r: f"{r:.1f}x")
    table["seconds"] = table["seconds"].round(1)
    table["images/s"] = table["images/s"].round(1)
    print()
    print("k-space tables (built once per machine and geometry, kept in the cache)")
    print(pd.DataFrame([tables]).to_string(index=False))
    print()
    print(
        "Simulation throughput (targets at 200,000: v1 >= 1,000 images/s and >= 100x naive; v3 within 20 % of v1; "
        "<= 8 GiB; the survey-like specs >= 500 images/s)"
    )
    print(table.astype(object).where(table.notna(), "").to_string(index=False))


if __name__ == "__main__":
    main()
