"""Same bytes, same runs: run one galparam tree end to end, or compare what two trees made.

A refactoring must not change what galparam makes. This script drives a source tree through its
console scripts only (an interface both trees share), on inputs it writes itself, and records
what came out; ``compare`` then says, file by file, whether two trees made the same thing::

    git worktree add /tmp/old <commit>
    .venv/bin/python scripts/parity.py run --tree /tmp/old /tmp/parity-old
    .venv/bin/python scripts/parity.py run --tree . /tmp/parity-new
    .venv/bin/python scripts/parity.py compare /tmp/parity-old /tmp/parity-new

What is run (about 6 minutes on 2 cores):

* datasets: v1 and v3 priors (k-space renderer), the SNR-60 test galaxy, and v1 drawn by GalSim;
  compared byte for byte (the npz and its metadata CSV);
* the resolved form of every shipped spec (``data/``, ``experiments/``, ``experiments/search/``),
  as the tree's loaders read it: a spec rewritten to extend another must resolve to the same spec;
* 2-epoch runs of the Xception, the autoencoder, the Xception with an uncertainty head and EDSR:
  ``metrics.json``, ``scaler.json``, ``image_scaler.json``, ``calibration.json`` and
  ``experiment.yaml`` byte for byte (the work folder's path aside; ``run.json`` records times and
  model hashes, so it is not compared);
* likelihood fits of the test set (every column but the time taken) and the report's tables
  (their bodies: the header lines name the git commit and model files, whose zip timestamps differ).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

PRIORS_V1 = {
    "flux": {"uniform": [3.0e4, 4.0e5]},
    "sersic_n": {"discretized": [0.5, 6.0]},
    "hlr": {"uniform": [0.1, 0.6]},
    "shear_amplitude": {"uniform": [0.0, 0.67]},
    "shear_angle": {"uniform": [0.0, 3.141592653589793]},
    "psf_fwhm": {"fixed": 0.5},
    "sigma": {"fixed": 200},
}
GEOMETRY = {"stamp_size": 64, "pixel_scale": 0.23, "psf_beta": 2.0, "sersic_grid_size": 1000, "poisson_noise": True}

DATASETS = {
    "v1": {"size": 1200, "seed": 1, "snr_window": [10, 100], "priors": PRIORS_V1},
    "v3": {
        "size": 300,
        "seed": 3,
        "snr_window": [10, 100],
        "priors": {**PRIORS_V1, "psf_fwhm": {"uniform": [0.5, 1.0]}, "sigma": {"integers": [200, 400]}},
    },
    "test_snr60": {
        "size": 200,
        "seed": 60,
        "validation_fraction": 0.0,
        "snr_window": None,
        "priors": {
            "flux": {"fixed": 1.0e5},
            "sersic_n": {"fixed": 3.0},
            "hlr": {"fixed": 0.3},
            "g1": {"fixed": -0.069},
            "g2": {"fixed": 0.15},
            "psf_fwhm": {"fixed": 0.5},
            "sigma": {"fixed": 200},
        },
    },
    "v1-galsim": {
        "size": 60,
        "seed": 11,
        "snr_window": [10, 100],
        "renderer": "galsim",
        "priors": {**PRIORS_V1, "sersic_n": {"discretized": [0.5, 2.0]}},
    },
}

TRAINING = {"dataset": "../data/v1.npz", "max_images": 600, "batch_size": 32, "epochs": 2, "patience": 0, "seed": 5}
RUNS = {
    "xception": {
        "family": "xception",
        "hyperparameters": {"conv2d_num_filters": 8, "sep_num_filters": 16, "num_residual_blocks": 1},
    },
    "autoencoder": {
        "family": "autoencoder",
        "hyperparameters": {"base_filters": 8, "dense_units": 32, "dropout_rate": 0.0},
        "epochs": 1,
    },
    "uncertainty": {
        "family": "xception",
        "uncertainty": "diagonal",
        "hyperparameters": {"conv2d_num_filters": 8, "sep_num_filters": 16, "num_residual_blocks": 1},
    },
    "edsr": {"family": "edsr", "hyperparameters": {"num_filters": 8, "num_res_blocks": 1}},
}
RUN_FILES = ("metrics.json", "scaler.json", "image_scaler.json", "calibration.json", "experiment.yaml")
FIT_IMAGES = 24

RESOLVE = """
import json, sys
from pathlib import Path
from galparam.specs import load_experiment, load_search, load_spec
root, out = Path(sys.argv[1]), {}
for path in sorted((root / "data").glob("*.yaml")):
    out[f"data/{path.name}"] = load_spec(path).to_yaml()
for path in sorted((root / "experiments").glob("*.yaml")):
    out[f"experiments/{path.name}"] = load_experiment(path).to_yaml().replace(str(root.resolve()), "ROOT")
for path in sorted((root / "experiments" / "search").glob("*.yaml")):
    spec = load_search(path).to_dict()
    out[f"experiments/search/{path.name}"] = json.dumps(spec, sort_keys=True).replace(str(root.resolve()), "ROOT")
print(json.dumps(out, sort_keys=True))
"""


def _yaml(mapping: dict) -> str:
    return json.dumps(mapping, indent=1)  # JSON is YAML: no PyYAML needed to write the inputs


def _call(tree: Path, work: Path, *args: str, check: bool = True) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "TF_CPP_MIN_LOG_LEVEL": "3"}
    print("+", " ".join(args), flush=True)
    return subprocess.run([sys.executable, *args], cwd=work, env=env, check=check).returncode


def run(tree: Path, work: Path) -> None:
    """Make everything this script compares, with the galparam of ``tree``, in ``work``."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    for name, changes in DATASETS.items():
        spec = {"name": name, "validation_fraction": 0.1, **GEOMETRY, "renderer": "kspace", **changes}
        (work / "data" / f"{name}.yaml").write_text(_yaml(spec))
        if (work / "data" / f"{name}.npz").exists():  # a second call goes on where the first stopped
            continue
        _call(tree, work, "-m", "galparam.cli.simulate", "run", f"data/{name}.yaml", "--jobs", "2", "--overwrite")
    (work / "experiments").mkdir(exist_ok=True)
    for name, changes in RUNS.items():
        # the dataset is relative to the spec's folder
        (work / "experiments" / f"{name}.yaml").write_text(_yaml({"name": name, **TRAINING, **changes}))
        if (work / "runs" / name / "run.json").exists():
            continue
        args = ("-m", "galparam.cli.train", "run", f"experiments/{name}.yaml", "-o", f"runs/{name}", "-q")
        # galparam-train before 0.2 wrote a denoiser's run, then failed printing label metrics it has not
        if _call(tree, work, *args, check=False) and not (work / "runs" / name / "run.json").exists():
            raise SystemExit(f"training {name} failed")
    _call(
        tree,
        work,
        "-m",
        "galparam.cli.evaluate",
        "baseline",
        "data/test_snr60.npz",
        "--n-images",
        str(FIT_IMAGES),
        "--jobs",
        "2",
        "-q",
        "-o",
        "fits/baseline.csv",
    )
    regressors = [f"runs/{name}" for name in RUNS if name != "edsr"]
    _call(
        tree,
        work,
        "-m",
        "galparam.cli.evaluate",
        "report",
        "--runs",
        *regressors,
        "runs/edsr",
        "--test-sets",
        "data/test_snr60.npz",
        "--fits",
        "fits/baseline.csv",
        "--n-images",
        "100",
        "-o",
        "report",
    )
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    resolved = subprocess.run(
        [sys.executable, "-c", RESOLVE, str(tree)], env=env, check=True, capture_output=True, text=True
    ).stdout
    (work / "resolved-specs.json").write_text(resolved)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprints(work: Path) -> dict:
    """What ``compare`` compares, file by file: a digest of the bytes that must match."""
    out = {}
    for path in sorted((work / "data").glob("*.npz")) + sorted((work / "data").glob("*.csv")):
        out[f"data/{path.name}"] = _digest(path.read_bytes())
    for name in RUNS:
        for file in RUN_FILES:
            path = work / "runs" / name / file
            if path.exists():  # the resolved experiment names its dataset by its absolute path
                out[f"runs/{name}/{file}"] = _digest(path.read_bytes().replace(str(work.resolve()).encode(), b"WORK"))
    fits = (work / "fits" / "baseline.csv").read_text().splitlines()
    seconds = fits[0].split(",").index("seconds")
    out["fits/baseline.csv (all but seconds)"] = _digest(
        "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != seconds) for line in fits).encode()
    )
    for path in sorted((work / "report").glob("*.*")):
        body = [line for line in path.read_text().splitlines() if not line.startswith(("#", "<!--", "%"))]
        out[f"report/{path.name} (body)"] = _digest("\n".join(body).encode())
    for key, text in json.loads((work / "resolved-specs.json").read_text()).items():
        out[f"resolved {key}"] = _digest(text.encode())
    return out


def compare(old: Path, new: Path) -> int:
    """Print one line per compared file; return 1 if any differs or is missing."""
    a, b = fingerprints(old), fingerprints(new)
    different = 0
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            verdict = "same"
        else:
            verdict = "MISSING" if key not in a or key not in b else "DIFFERENT"
            different += 1
        print(f"{verdict:9s} {key}")
    print(f"\n{len(set(a) | set(b)) - different} same, {different} different or missing")
    return 1 if different else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="make the datasets, runs, fits and report with one tree")
    r.add_argument("--tree", type=Path, default=Path("."), help="the galparam source tree (default: here)")
    r.add_argument("work", type=Path, help="an empty folder for what it makes")
    c = sub.add_parser("compare", help="compare two run folders")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.tree, args.work)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
