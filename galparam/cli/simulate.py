"""``galparam-simulate``: make a dataset from a spec, or merge shards."""

from __future__ import annotations

import argparse
import sys

from galparam.cli.common import ArgumentParser, nonnegative_int, positive_int, run
from galparam.simulate import DEFAULT_CHUNK_SIZE, default_output, merge, parse_shard, simulate
from galparam.specs import load_spec

DESCRIPTION = """\
Simulate a dataset of PSF-blurred, noisy Sérsic galaxies from a YAML spec (see data/*.yaml).

Writes OUT.npz (images, noiseless images, PSF images, labels, SNR, sigma, PSF FWHM, provenance)
and OUT.csv (one row of drawn values per image). Sample i depends only on (seed, i): the same
seed gives the same bytes whatever --jobs or --shard. An interrupted run resumes from the chunks
saved in OUT.npz.parts/ when started again; OUT.npz appears only when complete.

To spread a dataset over machines, run each shard (--shard 1/4 ... 4/4), then
  galparam-simulate merge data/v1.shard-*-of-4.npz -o data/v1.npz
"""

MERGE_DESCRIPTION = "Join the shard files of one spec into the dataset a single run writes, byte for byte."


def _simulate_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="galparam-simulate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("spec", metavar="SPEC.yaml", help="dataset spec")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="output file (default: the spec's path with .npz)")
    p.add_argument("--size", type=positive_int, help="number of images (default: the spec's)")
    p.add_argument("--seed", type=nonnegative_int, help="random seed (default: the spec's)")
    p.add_argument("--jobs", type=positive_int, help="worker processes (default: all cores)")
    p.add_argument("--shard", metavar="K/N", help="write only the K-th of N parts, for 'merge' (K from 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help="images per saved chunk, the most an interruption loses (default: %(default)s)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _merge_parser() -> ArgumentParser:
    p = ArgumentParser(prog="galparam-simulate merge", description=MERGE_DESCRIPTION)
    p.add_argument("parts", nargs="+", metavar="PART.npz", help="shard files written with --shard")
    p.add_argument("-o", "--output", metavar="OUT.npz", required=True, help="the dataset to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "merge":
        args = _merge_parser().parse_args(argv[1:])
        out = merge(args.parts, args.output, overwrite=args.overwrite)
        print(f"wrote {out} and {out.with_suffix('.csv')}")
        return 0
    args = _simulate_parser().parse_args(argv)
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
