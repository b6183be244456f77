"""galparam beside pysersic and AstroPhot on the same stamps: speed, failures, accuracy over the bound.

    python benchmarks/bench_peers.py                      # 200 stamps a geometry + the 8 real cutouts
    python benchmarks/bench_peers.py --images 40          # quicker
    python benchmarks/bench_peers.py --peers-python /path/to/venv/bin/python

Not in CI (the peers take seconds a stamp). The peers run in their own environment, never in
galparam's: unless ``--peers-python`` is given, the benchmark creates ``bench-peers/.venv`` and
installs pysersic 0.1.5 and AstroPhot 0.18.0 from PyPI into it (pinned: their conventions, checked
below, are those of these versions). ``benchmarks/peer_worker.py`` fits stacks there.

What every tool gets: the same stamps (npz), the same effective PSF image at the data's pixel scale,
the same σ map and mask, one thread each, one process, one tool at a time.

* pysersic: ``autoprior`` + ``FitSingle.find_MAP`` (its MAP fit), sky fixed at 0;
* AstroPhot: its ``sersic galaxy model`` from an adaptive-moments start, fitted by ``fit.LM`` (its
  default fitter), no sky, its own pixel integration with the pixel divided out of the PSF;
* galparam: ``galparam.measure`` (the moments start, the batched stamp fit), sky held at 0.

Stamps: 64² at 0.23″ with a Moffat (FWHM 0.5″, β 2) and 100² at 0.03″ with an HST/ACS F814W PSF image,
``--images`` each at SNR 60, the galaxy's centre within ±3 pixels, drawn by GalSim with the PSF image
itself (``InterpolatedImage``, ``no_pixel``), so no tool's PSF differs from the truth. Bounds are
the Cramér–Rao bounds at each stamp's truth. Each tool's parameters are converted to galparam's
(flux, index, circularized half-light radius, reduced shear, one-based centre); the conversion is
checked first on a noiseless stamp of each geometry. Start-up (imports, JIT compilation: one
untimed warm-up fit) is reported apart from the seconds a stamp. The real cutouts (data/real: 3 SDSS,
5 HST) are fitted by all three; their table is the median difference from galparam in units of
galparam's errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import galsim
import numpy as np
from bench_measure import SNR, galsim_stamp, geometries, simulate
from threadpoolctl import threadpool_limits

from galparam.evaluate import stamp_fit
from galparam.evaluate.crb import covariances, fisher_matrices
from galparam.frame import Frame
from galparam.kspace.grid import good_fft_size
from galparam.kspace.stamps import MINIMUM_FFT_SIZE, draw_stamps, wide_tables
from galparam.measure import measure, read_catalog
from galparam.psf import ImagePSF, MoffatPSF
from galparam.stamp import Stamp

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "data" / "real"
WORKER = Path(__file__).resolve().parent / "peer_worker.py"
PEERS = {"pysersic": "pysersic==0.1.5", "astrophot": "astrophot==0.18.0"}
TOOLS = ("galparam", *PEERS)
COLUMNS = ("flux", "sersic_n", "hlr_arcsec", "g1", "g2", "x", "y")
LABELS = ("flux", "sersic_n", "hlr", "g1", "g2", "x", "y")
MOFFAT_PSF_SIDE = 41


def peers_python(requested: str | None, venv: Path) -> Path:
    """The interpreter of the peers' environment, created (PyPI, pinned versions) when missing."""
    if requested:
        return Path(requested)
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {', '.join(PEERS.values())} (once; about 2 GB)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS.values()], check=True)
    return python


def frames() -> dict:
    """The two simulated geometries: name → (frame whose PSF every tool is given, galaxy)."""
    measured = geometries()
    ground_name, hst_name = list(measured)[:2]
    ground, galaxy, _, _ = measured[ground_name]
    scale = ground.pixel_scale
    moffat = MoffatPSF(0.5, 2.0).to_galsim()
    side = MOFFAT_PSF_SIDE
    image = moffat.drawImage(nx=side, ny=side, scale=scale, dtype=float).array  # pixel included
    ground = Frame(ground.shape, scale, ImagePSF(image, scale, source="Moffat FWHM 0.5″ β 2"))
    hst, hst_galaxy, _, _ = measured[hst_name]
    return {"64² 0.23″ Moffat image": (ground, galaxy), "100² 0.03″ HST PSF image": (hst, hst_galaxy)}


def write_stack(path: Path, stamps, names=None) -> Path:
    """Stamps of one shape and pixel scale as the worker's npz (mask True: the pixel counts)."""
    psfs = [s.frame.psf.array / s.frame.psf.array.sum() for s in stamps]
    np.savez(
        path,
        images=np.stack([s.image for s in stamps]),
        sigma=np.stack([s.sigma for s in stamps]),
        mask=np.stack([s.mask for s in stamps]),
        psf=np.stack(psfs),
        pixel_scale=np.float64(stamps[0].frame.pixel_scale),
        names=np.array(names or [s.name for s in stamps]),
    )
    return path


def run_peers(python: Path, tool: str, stacks: list[Path], threads: int) -> list[dict]:
    """Each stack's results from ``tool`` (reused when the stack is unchanged since its run)."""
    outs = [stack.with_name(f"{stack.stem}.{tool}.json") for stack in stacks]
    digests = [hashlib.sha256(stack.read_bytes()).hexdigest() for stack in stacks]
    todo = [
        i
        for i, (out, digest) in enumerate(zip(outs, digests, strict=True))
        if not (out.exists() and json.loads(out.read_text()).get("stamps_sha256") == digest)
    ]
    if todo:
        command = [str(python), str(WORKER), "--tool", tool, "--threads", str(threads)]
        command += [
            "--stamps",
            *[str(stacks[i].resolve()) for i in todo],
            "--out",
            *[str(outs[i].resolve()) for i in todo],
        ]
        print(f"{tool}: fitting {', '.join(stacks[i].name for i in todo)}", flush=True)
        log = outs[todo[0]].with_suffix(".log")
        with open(log, "w") as fh:
            # in the working folder: a stray log a peer writes on import stays there
            done = subprocess.run(command, stderr=fh, stdout=fh, cwd=log.parent)
        if done.returncode != 0:
            raise SystemExit(f"{tool} failed (exit {done.returncode}); see {log}")
    return [json.loads(out.read_text()) for out in outs]


def galparam_fit(stamps) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """galparam's values and errors (COLUMNS), converged flags and seconds a stamp, on one thread."""
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        table = measure(list(stamps), jobs=1, progress=False)
        seconds = (time.perf_counter() - t0) / len(stamps)
    values = np.column_stack([np.asarray(table[c], dtype=float) for c in COLUMNS])
    errors = np.column_stack([np.asarray(table[f"{c}_err"], dtype=float) for c in COLUMNS])
    return values, errors, np.asarray(table["converged"], dtype=bool), seconds


def galparam_time(stamps, frame: Frame) -> dict:
    """Where galparam's fits of ``stamps`` spend their time, one thread, in this process: the stamp
    model's draws a stamp and ms each by FFT size (a gradient's adjoint counted with its draw), the
    seconds a stamp, and a what-if: the same fits with every draw on the smallest FFT GalSim would
    use for the stamp (its ``minimum_fft_size`` or the stamp's good size), their seconds a stamp.
    That model is not GalSim's drawing, whose own FFT size (99.5 % of the flux, at most
    ``FIT_FFT_SIDES`` times the stamp) the exactness contract keeps: the what-if is a floor."""
    calls, spent = Counter(), Counter()
    drawing = stamp_fit.draw_stamps

    def counted(tables, frame, theta, *, grid=None, derivatives=None, **kwargs):
        size = int(np.max(grid[0])) if grid is not None else -1
        t0 = time.perf_counter()
        drawn = drawing(tables, frame, theta, grid=grid, derivatives=derivatives, **kwargs)
        spent[size] += time.perf_counter() - t0
        calls[size] += 1
        if derivatives != "vjp":
            return drawn
        image, vjp = drawn

        def timed_vjp(weights):
            t1 = time.perf_counter()
            out = vjp(weights)
            spent[size] += time.perf_counter() - t1
            return out

        return image, timed_vjp

    smallest = max(MINIMUM_FFT_SIZE, int(good_fft_size(max(frame.shape))))
    sizes = stamp_fit.fit_fft_size
    try:
        stamp_fit.draw_stamps = counted
        seconds = galparam_fit(stamps)[3]
        stamp_fit.draw_stamps = drawing
        stamp_fit.fit_fft_size = lambda _frame: smallest
        floor = galparam_fit(stamps)[3]
    finally:
        stamp_fit.draw_stamps, stamp_fit.fit_fft_size = drawing, sizes
    count = len(stamps)
    draws = {size: (calls[size] / count, 1e3 * spent[size] / calls[size]) for size in sorted(calls)}
    return {
        "seconds": seconds,
        "model_share": sum(spent.values()) / (seconds * count),
        "draws": draws,
        "smallest": smallest,
        "floor": floor,
    }


def peer_values(result: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker result's converted values (COLUMNS; NaN where it failed), ok flags, seconds."""
    rows = result["stamps"]
    values = np.array([[np.nan if r["galparam"][c] is None else r["galparam"][c] for c in COLUMNS] for r in rows])
    ok = np.array([bool(r["converged"]) and not r["error"] for r in rows])
    return values, ok, np.array([r["seconds"] for r in rows])


def centred(values: np.ndarray, frame: Frame) -> np.ndarray:
    """One-based FITS centres → offsets from the stamp's centre (the truths' dx, dy)."""
    out = values.copy()
    ny, nx = frame.shape
    out[:, 5] -= (nx + 1) / 2
    out[:, 6] -= (ny + 1) / 2
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="stamps per geometry (default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "peers", help="working folder")
    p.add_argument("--peers-python", help="python of an environment with pysersic and AstroPhot")
    p.add_argument("--venv", type=Path, default=ROOT / "bench-peers" / ".venv", help="where to create it")
    p.add_argument("--threads", type=int, default=1, help="threads for every tool (default: %(default)s)")
    p.add_argument("--seed", type=int, default=26)
    p.add_argument(
        "--posteriors",
        type=int,
        default=8,
        help="also sample this many 64² stamps' posteriors, galparam's beside pysersic's NUTS "
        "(~1 minute a stamp for pysersic; 0: skip; default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.posteriors < 0:
        p.error(f"--posteriors {args.posteriors}: give 0 or more")
    if args.images < 2:
        p.error(f"--images {args.images}: give at least 2")
    args.out.mkdir(parents=True, exist_ok=True)
    python = peers_python(args.peers_python, args.venv)
    rng = np.random.default_rng(args.seed)

    speed, accuracy, conversion, time_split = [], [], [], []
    for g, (name, (frame, galaxy)) in enumerate(frames().items()):
        # conversion check: one noiseless stamp, σ from the SNR so the bound gives the scale
        truth = np.r_[galaxy, 1.3, -0.7, 0.0]
        clean = galsim_stamp(frame, truth)
        sigma = float(np.sqrt(np.sum(clean**2)) / SNR)
        stamps, truths, bounds = simulate(frame, galaxy, 0.0, args.images, rng)
        noiseless = Stamp.from_arrays(clean, frame, noise_sigma=sigma, name=f"noiseless{g}")
        check_stack = write_stack(args.out / f"geometry{g}-noiseless.npz", [noiseless])
        stack = write_stack(args.out / f"geometry{g}.npz", stamps)
        # galparam's first fit of a geometry (the noiseless stamp) loads its tables and the PSF's
        # transforms: its start-up, reported apart as the peers' imports and compilations are
        t0 = time.perf_counter()
        noiseless_values = {"galparam": galparam_fit([noiseless])[0]}
        startups = {"galparam": time.perf_counter() - t0}
        found = {"galparam": galparam_fit(stamps)}
        time_split.append((name, galparam_time(stamps, frame)))
        for tool in PEERS:
            check, result = run_peers(python, tool, [check_stack, stack], args.threads)
            noiseless_values[tool] = peer_values(check)[0]
            found[tool] = result
            # the worker's imports and first compilations are paid on the check stamp, its first stack
            startups[tool] = check["startup_seconds"] + result["startup_seconds"]
        _, _, noiseless_bounds = simulate_bound(frame, truth, sigma)
        for tool in TOOLS:
            error = (centred(noiseless_values[tool], frame)[0] - truth[:7]) / noiseless_bounds
            conversion.append((name, tool, error))
        for tool in TOOLS:
            if tool == "galparam":
                values, _, ok, seconds = found[tool]
            else:
                values, ok, per_stamp = peer_values(found[tool])
                seconds = float(np.mean(per_stamp))
            startup = startups[tool]
            pulls = (centred(values, frame) - truths[:, :7]) / bounds
            speed.append((name, tool, seconds, startup, int((~ok).sum()), len(ok)))
            good = ok & np.isfinite(pulls).all(axis=1)
            accuracy.append((name, tool, pulls[good].mean(axis=0), pulls[good].std(axis=0), int(good.sum())))

        if g == 0 and args.posteriors:
            sampled = posteriors_side_by_side(python, args, stamps[: args.posteriors])

    real_rows = real_cutouts(python, args.out, args.threads)
    report(args, speed, accuracy, conversion, real_rows)
    report_time_split(speed, time_split)
    if args.posteriors:
        report_posteriors(args, *sampled)
    return 0


POSTERIOR_COLUMNS = ("flux", "sersic_n", "hlr")
"""The parameters whose posteriors are compared (galparam's names; the peer's converted)."""


def posteriors_side_by_side(python: Path, args, stamps) -> tuple:
    """galparam's posteriors (``measure(posterior=True)``: importance sampling from the fit's
    Laplace approximation, emcee where it falls short) and pysersic's NUTS on the same stamps, one
    thread each: per tool the seconds a stamp, the smallest ESS over the parameters, the
    posterior means and standard deviations (flux, index, radius in arcsec)."""
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        measure(list(stamps[:1]), posterior=True, jobs=1, progress=False)  # start-up, apart
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = measure(list(stamps), posterior=True, jobs=1, progress=False)
        seconds = (time.perf_counter() - t0) / len(stamps)
    ours = {
        "seconds": seconds,
        "startup": startup,
        "ess": np.asarray(table["post_ess"], dtype=float),
        "mean": np.column_stack([np.asarray(table[f"{c}_post_mean"], dtype=float) for c in POSTERIOR_COLUMNS]),
        "std": np.column_stack([np.asarray(table[f"{c}_post_std"], dtype=float) for c in POSTERIOR_COLUMNS]),
    }
    stack = write_stack(args.out / "geometry0-posteriors.npz", stamps)
    (result,) = run_peers(python, "pysersic-nuts", [stack], args.threads)
    rows = result["stamps"]
    theirs = {
        "seconds": float(np.mean([r["seconds"] for r in rows])),
        "startup": result["startup_seconds"],
        "ess": np.array([r["info"].get("ess_bulk_min", np.nan) for r in rows], dtype=float),
        "mean": np.array(
            [
                [np.nan if r["galparam"][k] is None else r["galparam"][k] for k in ("flux", "sersic_n", "hlr_arcsec")]
                for r in rows
            ],
            dtype=float,
        ),
        "std": np.array([_nuts_spread(r) for r in rows], dtype=float),
        "failed": int(sum(not r["converged"] for r in rows)),
    }
    return ours, theirs, len(stamps)


def _nuts_spread(row: dict) -> list:
    """A pysersic-nuts row's posterior σ of flux, index and circularized radius in arcsec (NaN for a
    failed run). Its r_eff is the semi-major axis in pixels: its relative spread is applied to the
    radius (the axis ratio's own spread left out)."""
    std = row["info"].get("std")
    if not std or not row["params"]:
        return [np.nan] * 3
    return [std["flux"], std["n"], std["r_eff"] / row["params"]["r_eff"] * row["galparam"]["hlr_arcsec"]]


def report_posteriors(args, ours: dict, theirs: dict, count: int) -> None:
    """Print the posterior comparison (Markdown)."""
    print(f"\n## Posteriors: {count} stamps of 64² at SNR {SNR:g}, one thread each")
    print(
        "| tool | s / galaxy | start-up s | median smallest ESS | ESS / s | "
        + " | ".join(f"{c} std" for c in POSTERIOR_COLUMNS)
        + " |"
    )
    print("| --- | --- | --- | --- | --- |" + " --- |" * len(POSTERIOR_COLUMNS))
    for tool, found in (("galparam", ours), ("pysersic NUTS", theirs)):
        ess = float(np.nanmedian(found["ess"]))
        spreads = " | ".join(f"{v:.4g}" for v in np.nanmedian(found["std"], axis=0))
        print(
            f"| {tool} | {found['seconds']:.2f} | {found['startup']:.1f} | {ess:.0f} | {ess / found['seconds']:.0f} | {spreads} |"
        )
    difference = np.nanmedian(np.abs(theirs["mean"] - ours["mean"]) / ours["std"], axis=0)
    print(
        "\nMedian |pysersic's posterior mean − galparam's| in galparam's posterior σ: "
        + ", ".join(f"{c} {d:.2f}" for c, d in zip(POSTERIOR_COLUMNS, difference, strict=True))
        + f"; pysersic runs whose R-hat exceeded 1.05: {theirs['failed']}/{count}. Priors differ (galparam: flat in "
        "the fit's box; pysersic: its autoprior)."
    )


def report_time_split(speed, time_split) -> None:
    """Print where galparam's time goes and its floor beside the fastest peer (Markdown)."""
    print("\n## Where galparam's time goes (one thread; the stamp model's draws by FFT size)")
    print(
        "| geometry | s / stamp | model's share | draws a stamp (ms each) by FFT size | every draw on the smallest FFT: s / stamp "
        "| fastest peer s / stamp | galparam faster by: now, on the smallest FFT |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, split in time_split:
        peer = min(seconds for geometry, tool, seconds, *_ in speed if geometry == name and tool != "galparam")
        draws = ", ".join(f"{size}²: {per_stamp:.1f} ({ms:.1f})" for size, (per_stamp, ms) in split["draws"].items())
        print(
            f"| {name} | {split['seconds']:.3f} | {split['model_share']:.0%} | {draws} | "
            f"{split['floor']:.3f} ({split['smallest']}²) | {peer:.3f} | "
            f"{peer / split['seconds']:.1f}×, {peer / split['floor']:.1f}× |"
        )


def simulate_bound(frame: Frame, truth, sigma: float):
    """The Cramér–Rao bounds (7) of one stamp at ``truth`` with white noise ``sigma``."""
    model, jac = draw_stamps(wide_tables(), frame, np.asarray(truth)[None], derivatives="jacobian")
    fisher = fisher_matrices(model, jac[:, :7], np.full(frame.shape, sigma)[None], poisson=False)
    return model, jac, np.sqrt(np.diag(covariances(fisher)[0]))


def real_cutouts(python: Path, out: Path, threads: int) -> list:
    """Per real galaxy: galparam's values and errors, each peer's values, and seconds (one stack each)."""
    cutouts = read_catalog(REAL / "sdss.ecsv") + read_catalog(REAL / "hst-aegis" / "AEGIS_F814w_catalog.fits")
    stamps = [c.read()[0] for c in cutouts]
    stacks = [write_stack(out / f"real-{i}.npz", [s]) for i, s in enumerate(stamps)]
    results = {tool: run_peers(python, tool, stacks, threads) for tool in PEERS}
    rows = []
    for i, stamp in enumerate(stamps):
        values, errors, ok, seconds = galparam_fit([stamp])
        peers = {tool: peer_values(results[tool][i]) for tool in PEERS}
        rows.append((stamp, values[0], errors[0], bool(ok[0]), seconds, peers))
    return rows


def report(args, speed, accuracy, conversion, real_rows) -> None:
    """Print the tables (Markdown)."""
    print(f"\n## Speed: one thread each, {args.images} stamps a geometry at SNR {SNR:g}")
    print(
        "| geometry | tool | s / stamp | galparam faster by | start-up s (imports, JIT; galparam: its first fit, tables loaded) | failed |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    base = {name: seconds for name, tool, seconds, *_ in speed if tool == "galparam"}
    for name, tool, seconds, startup, failed, total in speed:
        ratio = "—" if tool == "galparam" else f"{seconds / base[name]:.1f}×"
        print(f"| {name} | {tool} | {seconds:.3f} | {ratio} | {startup:.2f} | {failed}/{total} |")
    print("\n## Accuracy: bias / CRB and std / CRB (converged fits)")
    print("| geometry | tool | fits | " + " | ".join(f"{c} bias, std" for c in LABELS) + " |")
    print("| --- | --- | --- |" + " --- |" * len(LABELS))
    for name, tool, bias, spread, count in accuracy:
        cells = " | ".join(f"{b:+.2f}, {s:.2f}" for b, s in zip(bias, spread, strict=True))
        print(f"| {name} | {tool} | {count} | {cells} |")
    print("\n## Conversion check: a noiseless stamp, (value − truth) / CRB at SNR 60")
    print("| geometry | tool | " + " | ".join(LABELS) + " |")
    print("| --- | --- |" + " --- |" * len(LABELS))
    for name, tool, error in conversion:
        print(f"| {name} | {tool} | " + " | ".join(f"{e:+.2f}" for e in error) + " |")
    print("\n## Real cutouts: (peer − galparam) / galparam's error")
    print("| galaxy | tool | s | converged | " + " | ".join(LABELS) + " |")
    print("| --- | --- | --- | --- |" + " --- |" * len(LABELS))
    differences = {tool: [] for tool in PEERS}
    for stamp, values, errors, ok, seconds, peers in real_rows:
        print(f"| {stamp.name} | galparam | {seconds:.2f} | {'yes' if ok else 'no'} |" + " |" * len(LABELS))
        for tool, (peer, peer_ok, peer_seconds) in peers.items():
            difference = (peer[0] - values) / errors
            differences[tool].append(difference)
            cells = " | ".join(f"{d:+.1f}" for d in difference)
            print(f"| | {tool} | {peer_seconds[0]:.2f} | {'yes' if peer_ok[0] else 'no'} | {cells} |")
    for tool, rows in differences.items():
        median = np.nanmedian(np.abs(np.array(rows)), axis=0)
        print(f"| median \\|difference\\| | {tool} | | | " + " | ".join(f"{m:.1f}" for m in median) + " |")
    print(f"\npysersic, AstroPhot: {', '.join(PEERS.values())}; SNR {SNR:g}; galsim {galsim.__version__}.")


if __name__ == "__main__":
    raise SystemExit(main())
