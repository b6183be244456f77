"""``galparam-train``: train an experiment spec into a run folder."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from galparam import runs
from galparam.cli.common import ArgumentParser, add_overwrite, default_subcommand, load_tensorflow_quietly, run
from galparam.evaluate.restoration import COLUMNS as RESTORATION_COLUMNS
from galparam.models import FAMILIES
from galparam.parameters import LABEL_NAMES
from galparam.specs import load_experiment
from galparam.train import train

PROG = "galparam-train"
COMMANDS = ("run",)
DESCRIPTION = (
    f"Train a model of one of the families {', '.join(FAMILIES)} described by an experiment spec "
    f"(experiments/*.yaml). The run folder receives {runs.MODEL_FILE}, the scalers, the resolved "
    f"{runs.SPEC_FILE}, {runs.HISTORY_FILE}, {runs.METRICS_FILE} (a regressor's validation RMSE, bias and "
    "explained variance per parameter, in physical units; a denoiser's residual RMS, PSNR and SSIM), "
    f"checkpoints each epoch, and {runs.RUN_FILE} once the run is complete."
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog="example: galparam-train run experiments/xception-v1-small.yaml   ('run' may be left out; "
        "then: galparam-evaluate predict RUN DATA.npz)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    r = sub.add_parser("run", help="train an experiment", description=DESCRIPTION)
    r.add_argument("experiment", metavar="EXPERIMENT.yaml", help="the experiment spec")
    r.add_argument("-o", "--output", metavar="DIR", help="run folder (default: runs/NAME, NAME from the spec)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the folder from its last checkpoint (a finished run: nothing to do)",
    )
    add_overwrite(r, "remove a run that is in the folder and train from scratch")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
    r.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="train with this seed instead of the spec's (weights and shuffling), into runs/NAME-seedN unless "
        "-o says otherwise: the members of a deep ensemble (galparam-evaluate predict RUN DATA --ensemble RUN...)",
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(default_subcommand(argv, COMMANDS, "run"))
    spec = load_experiment(args.experiment)
    output = args.output
    if args.seed is not None:
        if not 0 <= args.seed < 2**31:
            print(f"{PROG}: --seed {args.seed}: a whole number from 0 to 2**31 - 1 is accepted", file=sys.stderr)
            return 2
        spec = dataclasses.replace(spec, seed=args.seed)
        output = output or str(Path("runs") / f"{spec.name}-seed{args.seed}")
    load_tensorflow_quietly()  # only once the spec is known to be valid
    run_dir = train(spec, output, resume=args.resume, overwrite=args.overwrite, verbose=0 if args.quiet else "auto")
    folder = runs.RunFolder(run_dir)
    print(f"run complete: {run_dir}")
    print(validation_summary(folder, FAMILIES[spec.family].restores_images))
    return 0


def validation_summary(folder: runs.RunFolder, restores_images: bool) -> str:
    """The run's validation metrics as the console prints them: per label, or a denoiser's images."""
    n = len(folder.validation_indices())
    if restores_images:
        images = folder.restoration_metrics()
        lines = [f"validation ({n} images)   " + "   ".join(f"{c:>12s}" for c in RESTORATION_COLUMNS)]
        for kind in ("noisy", "denoised"):
            lines.append(f"  {kind:9s}" + "   ".join(f"{images[kind][c]:12.5g}" for c in RESTORATION_COLUMNS))
        return "\n".join(lines)
    metrics = folder.metrics()
    lines = [f"validation ({n} images)   rmse        bias   explained variance"]
    for name in LABEL_NAMES:
        m = metrics[name]
        lines.append(f"  {name:9s} {m['rmse']:12.5g} {m['bias']:11.4g} {m['explained_variance']:12.4f}")
    return "\n".join(lines)


def entry_point() -> None:
    sys.exit(run(main, prog=PROG))


if __name__ == "__main__":
    entry_point()
