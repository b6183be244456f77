"""``galparam-explore``: the explorer web app (Streamlit), on this machine unless told otherwise."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from galparam import explorer
from galparam.cli.common import ArgumentParser, run
from galparam.errors import GalparamError
from galparam.runs import RunFolder

PROG = "galparam-explore"
DESCRIPTION = (
    "Start the explorer: a web app to see how a galaxy's parameters, its PSF and its noise make an "
    "image, what the Cramér-Rao bound is there, and what each trained run estimates (Simulate page); "
    "and to browse a dataset with a run's predictions against each image's bound (Dataset page)."
)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise GalparamError(f"port {text!r} is not a whole number; accepted 1..65535", argument="port") from None
    if not 1 <= value <= 65535:
        raise GalparamError(f"port {value} is outside 1..65535", argument="port")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog="example: galparam-explore --runs runs/xception-v2-small --dataset data/v2-small.npz",
    )
    parser.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="finished galparam-train run folders")
    parser.add_argument("--dataset", metavar="DATA.npz", help="a dataset to browse on the Dataset page")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine)")
    parser.add_argument("--port", default="8501", help="port to serve on (default: %(default)s)")
    return parser


def check_port(host: str, port: int) -> None:
    """Raise if ``port`` cannot be served on ``host`` (in use, or not an address of this machine)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise GalparamError(
            f"port {port} on {host} cannot be served ({exc.strerror or exc}); give another with --port",
            argument="port",
        ) from None


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    port = _port(args.port)
    for run_dir in args.runs:  # an unfinished or foreign folder is refused before anything starts
        RunFolder(run_dir).info()
    if args.dataset:
        explorer.load(args.dataset)
    check_port(args.host, port)
    env = dict(os.environ)
    env[explorer.RUNS_ENV] = os.pathsep.join(str(Path(r).resolve()) for r in args.runs)
    env[explorer.DATASET_ENV] = str(Path(args.dataset).resolve()) if args.dataset else ""
    app = Path(explorer.__file__).with_name("explorer_app.py")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        args.host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    print(f"galparam explorer: http://{args.host}:{port}  (Ctrl-C stops it)", flush=True)
    # this process becomes the server: a signal that stops galparam-explore stops the app, and no
    # server outlives it
    os.execve(sys.executable, command, env)


def entry_point() -> None:
    sys.exit(run(main, prog=PROG))


if __name__ == "__main__":
    entry_point()
