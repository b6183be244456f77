"""Reading a spec file: its YAML, and the specs it extends (``base: OTHER.yaml``).

A spec may extend another and give only what it changes::

    # experiments/xception-v2.yaml
    base: xception-v1.yaml
    name: xception-v2
    dataset: ../data/v2.npz

The base (a path relative to the spec's folder) is read first, itself perhaps extending another,
and the spec's keys override its keys. A mapping (``hyperparameters``, ``priors``) is merged one
level down: the spec gives the entries it changes, and ``null`` there removes an entry of the base
(``priors: {shear_amplitude: null, shear_angle: null, g1: ..., g2: ...}``). Paths inside a base
(a dataset, a denoiser run) stay relative to the base's own folder. What a dataset, a run or a
search records is the resolved spec, never the chain of files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from galparam.errors import SpecError

BASE_KEY = "base"
"""The key that names the spec a spec extends."""


def read_yaml(path: Path, what: str):
    """The YAML document of a spec file, or one SpecError naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the {what} ({exc})") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied: keys replaced, mappings merged one level down (a null
    entry there removes the base's)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = {**out[key], **value}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            out[key] = value
    return out


def read_spec_file(path, what: str, relocate: Callable[[dict, Path], dict] | None = None, _seen=()) -> dict:
    """The mapping of a spec file with the chain of specs it extends resolved.

    Parameters
    ----------
    path : path-like
        The spec file.
    what : str
        What the file is, for messages ("dataset spec").
    relocate : callable, optional
        ``relocate(mapping, folder)`` makes a base's relative paths absolute from its folder, so
        that they still name the same files from the extending spec's folder.

    Raises
    ------
    SpecError
        A file missing or not YAML, a ``base`` that is not a file name, or a chain of bases
        that comes back to a file already in it.
    """
    path = Path(path)
    raw = read_yaml(path, what)
    if not isinstance(raw, dict) or BASE_KEY not in raw:
        return raw
    base_name = raw[BASE_KEY]
    if not isinstance(base_name, str) or not base_name.endswith((".yaml", ".yml")):
        raise SpecError(f"{path}: {BASE_KEY}: {base_name!r} is not a spec file (.yaml) to extend")
    base_path = (path.parent / base_name).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise SpecError(f"{path}: {BASE_KEY}: {base_name} extends {path.name} again (a cycle of bases)")
    base = read_spec_file(base_path, what, relocate, (*_seen, path.resolve()))
    if not isinstance(base, dict):
        raise SpecError(f"{base_path}: the {what} a spec extends must be a mapping of settings")
    if relocate is not None:
        base = relocate(base, base_path.parent)
    return merge(base, {k: v for k, v in raw.items() if k != BASE_KEY})
