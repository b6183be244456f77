"""``make demo``: the pipeline end to end on small data (``python -m galparam.demo``).

At this stage: simulate the small variants of v1, v2, v3 and both fixed-parameter test sets, then
print what each took. One set of worker processes serves all five, so every Sérsic index's GalSim
tables are built once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from galparam.cli.common import ArgumentParser, positive_int, run
from galparam.simulate import Workers, simulate
from galparam.specs import load_spec

DEMO_SPECS = ("v1-small", "v2-small", "v3-small", "test_snr30-small", "test_snr60-small")


def simulate_demo_datasets(data_dir, out_dir, *, jobs=None, progress=True) -> pd.DataFrame:
    """Simulate the demo datasets; returns one row per dataset (images, SNR range, speed)."""
    rows = []
    with Workers(jobs) as workers:
        for name in DEMO_SPECS:
            spec = load_spec(Path(data_dir) / f"{name}.yaml")
            s = simulate(spec, Path(out_dir) / f"{name}.npz", overwrite=True, progress=progress, workers=workers)
            rows.append(
                {
                    "dataset": name,
                    "images": s.images,
                    "SNR min": round(s.snr_min, 1),
                    "SNR max": round(s.snr_max, 1),
                    "rejection rate": f"{s.rejection_rate:.1%}",
                    "seconds": round(s.seconds, 1),
                    "images/s": round(s.images_per_second),
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = ArgumentParser(prog="galparam-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="folder of the dataset specs (default: %(default)s)")
    p.add_argument("--output", default="runs/demo", help="where the demo writes (default: %(default)s)")
    p.add_argument("--jobs", type=positive_int, help="worker processes (default: all cores)")
    args = p.parse_args(argv)
    out = Path(args.output)
    print(f"Simulating the demo datasets into {out / 'data'} ...", file=sys.stderr)
    table = simulate_demo_datasets(args.data, out / "data", jobs=args.jobs)
    print()
    print("Simulated datasets")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="galparam-demo"))
