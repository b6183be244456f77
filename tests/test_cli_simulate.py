"""The console script as a user meets it: exit codes, one-line errors, resume after SIGKILL."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import BASE_SPEC

CLI = [sys.executable, "-m", "galparam.cli.simulate"]


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def _spec_file(tmp_path, name="spec", **changes):
    raw = {**BASE_SPEC, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def test_help_explains():
    result = _run("--help")
    assert result.returncode == 0
    for word in ("--shard", "--jobs", "--overwrite", "merge", "resumes", "run --help"):
        assert word in result.stdout
    result = _run("run", "--help")
    for word in ("--shard", "--jobs", "--overwrite", "--chunk-size", "default: all cores"):
        assert word in result.stdout


def test_bad_arguments(tmp_path):
    spec = _spec_file(tmp_path)
    _assert_one_line_error(_run(spec, "--jobs", "0"), "--jobs", "at least 1")
    _assert_one_line_error(_run(spec, "--size", "ten"), "--size", "not a whole number")
    _assert_one_line_error(_run(spec, "--shard", "3/2", "-o", tmp_path / "x.npz"), "--shard", "between 1 and N")
    _assert_one_line_error(_run(spec, "--frobnicate"), "unrecognized arguments")
    _assert_one_line_error(_run(tmp_path / "missing.yaml"), "no such spec file")
    _assert_one_line_error(_run(_spec_file(tmp_path, "negative", size=-5)), "size", "-5")
    _assert_one_line_error(_run(spec, "-o", tmp_path / "out.txt"), ".npz")
    _assert_one_line_error(_run("merge", tmp_path / "nothing.npz", "-o", tmp_path / "m.npz"), "no such file")
    assert list(tmp_path.glob("*.npz")) == []


def test_unwritable_output(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/galparam/out.npz"  # not creatable, even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out.npz"
    _assert_one_line_error(
        _run(_spec_file(tmp_path), "-o", target, "-q"), "cannot create" if os.geteuid() == 0 else "not writable"
    )


def test_existing_output_is_kept(tmp_path):
    spec = _spec_file(tmp_path, size=2)
    out = tmp_path / "o.npz"
    assert _run(spec, "-o", out, "-q", "--jobs", "1").returncode == 0
    before = out.read_bytes()
    _assert_one_line_error(_run(spec, "-o", out, "-q", "--seed", "3"), "exists", "--overwrite")
    assert out.read_bytes() == before


KILL_AFTER_TWO_CHUNKS = """
import os, signal, sys
import galparam.simulate as simulate
from galparam.cli.simulate import main

saved = []
write = simulate.write_npz_atomic


def write_then_die(path, arrays):
    write(path, arrays)
    saved.append(path)
    if len(saved) == 2:  # SIGKILL right after the second chunk is committed, deterministically
        os.kill(os.getpid(), signal.SIGKILL)


simulate.write_npz_atomic = write_then_die
main(sys.argv[1:])
"""


def test_killed_run_resumes_to_the_same_bytes(tmp_path):
    spec = _spec_file(tmp_path, size=48)
    reference = tmp_path / "ref.npz"
    assert _run(spec, "-o", reference, "-q", "--jobs", "2", "--chunk-size", "8").returncode == 0

    out = tmp_path / "out.npz"
    parts = Path(str(out) + ".parts")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_AFTER_TWO_CHUNKS,
            str(spec),
            "-o",
            str(out),
            "-q",
            "--jobs",
            "1",
            "--chunk-size",
            "8",
        ],
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL
    assert len(list(parts.glob("chunk-*.npz"))) == 2 and not out.exists()

    result = _run(spec, "-o", out, "-q", "--jobs", "2", "--chunk-size", "8")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_suffix(".csv").read_bytes() == reference.with_suffix(".csv").read_bytes()
    assert not parts.exists()


def test_interrupted_run_of_another_spec_is_not_mixed_in(tmp_path):
    out = tmp_path / "o.npz"
    parts = Path(str(out) + ".parts")
    parts.mkdir()
    (parts / "manifest.json").write_text('{"digest": "something else"}')
    _assert_one_line_error(_run(_spec_file(tmp_path, size=2), "-o", out, "-q"), "another spec", "--overwrite")
    assert _run(_spec_file(tmp_path, size=2), "-o", out, "-q", "--overwrite").returncode == 0
    with np.load(out) as z:
        assert len(z["img"]) == 2


def test_shards_and_merge_from_the_console(tmp_path):
    spec = _spec_file(tmp_path, size=9)
    for k in (1, 2):
        assert _run(spec, "--shard", f"{k}/2", "-q", "--jobs", "1").returncode == 0
    shards = sorted(tmp_path.glob("spec.shard-*-of-2.npz"))
    assert len(shards) == 2
    result = _run("merge", *shards, "-o", tmp_path / "merged.npz")
    assert result.returncode == 0, result.stderr
    assert _run(spec, "-o", tmp_path / "whole.npz", "-q").returncode == 0
    assert (tmp_path / "merged.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
