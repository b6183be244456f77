"""``galparam-train``: train an experiment spec into a run folder."""

from __future__ import annotations

from galparam.cli.common import ArgumentParser, run

PROG = "galparam-train"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Train the Xception regressor or the conditional autoencoder described by an experiment spec "
            "(experiments/*.yaml). The run folder receives model.keras, scaler.json, the resolved "
            "experiment.yaml, history.csv, metrics.json (validation RMSE, bias and explained variance per "
            "parameter, in physical units), checkpoints each epoch, and run.json once the run is complete."
        ),
        epilog="example: galparam-train experiments/xception-v1-small.yaml   (then: galparam-evaluate predict RUN DATA.npz)",
    )
    parser.add_argument("experiment", metavar="EXPERIMENT.yaml", help="the experiment spec")
    parser.add_argument("-o", "--output", metavar="DIR", help="run folder (default: runs/NAME, NAME from the spec)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the folder from its last checkpoint (a finished run: nothing to do)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import os

    # TensorFlow's C++ start-up chatter (no GPU found, graph attribute notices) is not for users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from galparam.specs import load_experiment

    spec = load_experiment(args.experiment)
    from galparam.train import train  # TensorFlow loads only once the spec is known to be valid

    run_dir = train(spec, args.output, resume=args.resume, verbose=0 if args.quiet else "auto")
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"run complete: {run_dir}")
    print(f"validation ({metrics['n_images']} images)   rmse        bias   explained variance")
    from galparam.render import LABEL_NAMES

    for name in LABEL_NAMES:
        m = metrics["labels"][name]
        print(f"  {name:9s} {m['rmse']:12.5g} {m['bias']:11.4g} {m['explained_variance']:12.4f}")
    return 0


def entry_point() -> None:
    raise SystemExit(run(main, prog=PROG))


if __name__ == "__main__":
    entry_point()
