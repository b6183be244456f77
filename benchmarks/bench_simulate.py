"""Simulation throughput: galparam against a naive GalSim loop, measured in the same run.

    python benchmarks/bench_simulate.py                  # v1 at 20,000 and 200,000 images
    python benchmarks/bench_simulate.py --sizes 20000    # quicker

galparam: ``simulate`` on the v1 spec with ``--jobs`` workers (default 2), written to a temporary
folder. Naive reference: one process, a continuous Sérsic index (a new GalSim profile for every
candidate, so GalSim's cache never helps), one draw per candidate, the same priors, SNR window and
noise. Targets (issue 2): at 200,000 images ≥ 50× the naive rate and ≥ 500 images/s, and peak
memory ≤ 8 GiB.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
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
    psf = galsim.Moffat(beta=spec.psf_beta, fwhm=p["psf_fwhm"].low)
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
            galsim.Convolve(galaxy, psf).drawImage(nx=spec.stamp_size, ny=spec.stamp_size, scale=spec.pixel_scale).array
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--naive-images", type=int, default=60)
    p.add_argument("--spec", default=str(ROOT / "data" / "v1.yaml"))
    args = p.parse_args(argv)
    spec = load_spec(args.spec)

    print(f"naive reference: {args.naive_images} images ...", flush=True)
    naive = naive_rate(spec, args.naive_images)
    rows = [
        {
            "method": "naive GalSim loop (1 process)",
            "images": args.naive_images,
            "seconds": args.naive_images / naive,
            "images/s": naive,
        }
    ]
    for size in args.sizes:
        with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
            summary = simulate(spec.with_overrides(size=size), Path(tmp) / "v1.npz", jobs=args.jobs, progress=True)
            file_gib = summary.output.stat().st_size / 1024**3
        self_gib, child_gib = peak_rss_gib()
        rows.append(
            {
                "method": f"galparam --jobs {args.jobs}",
                "images": size,
                "seconds": summary.seconds,
                "images/s": summary.images_per_second,
                "rejection": f"{summary.rejection_rate:.1%}",
                "peak RSS main GiB": round(self_gib, 2),
                "peak RSS worker GiB": round(child_gib, 2),
                "file GiB": round(file_gib, 2),
            }
        )
    table = pd.DataFrame(rows)
    table["vs naive"] = (table["images/s"] / naive).map(lambda r: f"{r:.1f}x")
    table["seconds"] = table["seconds"].round(1)
    table["images/s"] = table["images/s"].round(1)
    print()
    print("Simulation throughput, v1 spec (targets at 200,000: >= 50x naive, >= 500 images/s, <= 8 GiB)")
    print(table.astype(object).where(table.notna(), "").to_string(index=False))


if __name__ == "__main__":
    main()
