"""``galparam-simulate``: make a dataset from a spec (``run``), merge shards (``merge``), or make
the k-space renderer's table file (``tables``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from galparam import kspace
from galparam.cli.common import (
    ArgumentParser,
    add_jobs,
    add_overwrite,
    default_subcommand,
    nonnegative_int,
    positive_int,
    run,
    setting_type,
)
from galparam.geometry import GEOMETRY_SETTINGS, Geometry
from galparam.io import atomic_path
from galparam.simulate import DEFAULT_CHUNK_SIZE, default_output, merge, parse_shard, simulate
from galparam.specs import load_spec

DESCRIPTION = """\
Simulate datasets of PSF-blurred, noisy Sérsic galaxies from YAML specs (see data/*.yaml).

  galparam-simulate run data/v1.yaml --jobs 2          make data/v1.npz (and data/v1.csv)
  galparam-simulate data/v1.yaml                       the same ("run" may be left out)
  galparam-simulate run data/v1.yaml --shard 1/4       one of four parts, for another machine
  galparam-simulate merge data/v1.shard-*-of-4.npz -o data/v1.npz
  galparam-simulate tables --copy-to DIR               the renderer's tables, for a machine without GalSim
  galparam-simulate data/sdss-like.yaml --size 20000   a survey's look: its PSF images, centres, a sky

Sample i depends only on (seed, i): the same seed gives the same bytes whatever --jobs or --shard.
An interrupted run resumes from the chunks saved in OUT.npz.parts/ when started again; OUT.npz
appears only when complete, and an existing one is replaced only with --overwrite.
Every option: galparam-simulate run --help, galparam-simulate merge --help, galparam-simulate tables --help.
"""

RUN_DESCRIPTION = """\
Write OUT.npz (images, noiseless images, PSF images, labels, SNR, sigma, PSF FWHM, provenance)
and OUT.csv (one row of drawn values per image) from a dataset spec.
"""

MERGE_DESCRIPTION = "Join the shard files of one spec into the dataset a single run writes, byte for byte."
TABLES_DESCRIPTION = """\
Make (once, ~30 s, with GalSim) and name the file of GalSim's Sérsic and PSF tables that the k-space
renderer draws from. A machine without GalSim draws, trains, fits and evaluates given this file in
its cache folder (~/.cache/galparam, or $GALPARAM_CACHE): copy it there with --copy-to.
"""
COMMANDS = ("run", "merge", "tables")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="galparam-simulate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    r = sub.add_parser("run", help="simulate a dataset from a spec", description=RUN_DESCRIPTION)
    r.add_argument("spec", metavar="SPEC.yaml", help="dataset spec")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="output file (default: the spec's path with .npz)")
    r.add_argument("--size", type=positive_int, help="number of images (default: the spec's)")
    r.add_argument("--seed", type=nonnegative_int, help="random seed (default: the spec's)")
    add_jobs(r)
    r.add_argument("--shard", metavar="K/N", help="write only the K-th of N parts, for 'merge' (K from 1)")
    add_overwrite(r, "replace an existing output")
    r.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help="images per saved chunk, the most an interruption loses (default: %(default)s)",
    )
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    m = sub.add_parser("merge", help="join shard files", description=MERGE_DESCRIPTION)
    m.add_argument("parts", nargs="+", metavar="PART.npz", help="shard files written with --shard")
    m.add_argument("-o", "--output", metavar="OUT.npz", required=True, help="the dataset to write")
    add_overwrite(m, "replace an existing output")
    t = sub.add_parser("tables", help="make and name the k-space renderer's table file", description=TABLES_DESCRIPTION)
    for key, setting in GEOMETRY_SETTINGS.items():
        t.add_argument(
            "--" + key.replace("_", "-"),
            type=setting_type(key, setting),
            default=setting.default,
            help=f"{setting.help} (default: %(default)s)",
        )
    t.add_argument("--copy-to", metavar="DIR", help="also copy the file into DIR (a cache folder to carry)")
    return p


def _tables(args) -> int:
    geometry = Geometry(**{key: getattr(args, key) for key in GEOMETRY_SETTINGS})
    kspace.load_tables(geometry)
    path = kspace.table_file(geometry)[1]
    print(path)
    if args.copy_to:
        target = Path(args.copy_to) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=".npz") as tmp:
            shutil.copyfile(path, tmp)
        print(target)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(default_subcommand(argv, COMMANDS, "run"))
    if args.command == "tables":
        return _tables(args)
    if args.command == "merge":
        out = merge(args.parts, args.output, overwrite=args.overwrite)
        print(f"wrote {out} and {out.with_suffix('.csv')}")
        return 0
    spec = load_spec(args.spec).with_overrides(size=args.size, seed=args.seed)
    shard = parse_shard(args.shard) if args.shard else None
    output = args.output or default_output(args.spec, shard)
    summary = simulate(
        spec,
        output,
        jobs=args.jobs,
        shard=shard,
        overwrite=args.overwrite,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    print(
        f"wrote {summary.output}: {summary.images} images, SNR {summary.snr_min:.1f}..{summary.snr_max:.1f}, "
        f"rejection rate {summary.rejection_rate:.1%}, {summary.seconds:.1f} s ({summary.images_per_second:.0f} images/s)"
    )
    return 0


def entry_point() -> None:
    sys.exit(run(main, prog="galparam-simulate"))


if __name__ == "__main__":
    entry_point()
