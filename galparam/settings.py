"""Declared settings: a key's type, default, accepted values and meaning, and the one reader of them.

Every table of keys galparam reads from a user (a dataset spec, an experiment, a search, a
geometry) is a mapping of names to :class:`Setting`; :func:`read_settings` checks a mapping against
it, so an unknown key, a missing one, a wrong type or an out-of-range value is refused with the
file, the key, the value and what is accepted, always in the same words.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from galparam.errors import SpecError
from galparam.interval import Interval

REQUIRED = object()
"""The default of a setting that must be given."""


@dataclass(frozen=True)
class Setting:
    """One key, declared once: the reader, its error messages and the docs read it.

    Attributes
    ----------
    type : type or None
        ``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict``; None for a choice among values
        of mixed types (``choices``).
    default : object
        The value when the key is absent, or :data:`REQUIRED`. A setting whose default is None
        also takes an explicit null.
    help : str
        What the key means (units included).
    range : Interval, optional
        The numbers accepted.
    choices : tuple, optional
        The values accepted.
    raw : bool
        Passed on unchecked: the caller validates it (a mapping, a pair).
    """

    type: type | None
    default: object = REQUIRED
    help: str = ""
    range: Interval | None = None
    choices: tuple | None = None
    raw: bool = False


TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def yaml_number(value):
    """PyYAML reads ``3.0e4`` (no exponent sign) as a string; take it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def yaml_text(value) -> str:
    """A value as YAML writes it (``null``, ``true``), for messages."""
    return {None: "null", True: "true", False: "false"}.get(value, str(value)) if not isinstance(value, str) else value


def check_setting(source: str, key: str, value, setting: Setting):
    """``value`` of ``key`` checked against ``setting`` (numbers coerced), or one :class:`SpecError`."""
    where = f"{source}: {key}"
    typ = setting.type
    choices = setting.choices
    if typ is None:  # a choice among values of mixed types
        if not any(value == c and type(value) is type(c) for c in choices):
            raise SpecError(f"{where}: {value!r} is not accepted; accepted: {', '.join(map(yaml_text, choices))}")
        return value
    if typ in (int, float):
        value = yaml_number(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise SpecError(f"{where}: {value!r} is not {TYPE_NAMES[typ]}")
    if typ in (int, float) and setting.range is not None and not setting.range.contains(value):
        raise SpecError(f"{where}: {value!r} is outside {setting.range.text()}")
    if typ is str and not value.strip():
        raise SpecError(f"{where}: must not be empty")
    if choices is not None and value not in choices:
        raise SpecError(f"{where}: {value!r} is not accepted; accepted: {', '.join(map(yaml_text, choices))}")
    return value


def read_settings(raw, table: dict, source: str, what: str) -> dict:
    """Each declared setting of ``raw``, checked (or its default); ``raw`` settings are passed as they are.

    Parameters
    ----------
    raw : dict
        The mapping read (from YAML).
    table : dict of str to Setting
        The keys accepted.
    source : str
        Where ``raw`` came from, for messages (a file name).
    what : str
        What ``raw`` is, for messages ("a dataset spec").

    Returns
    -------
    dict
        Every key of ``table``, in its order.

    Raises
    ------
    SpecError
        An unknown key, a missing required one, or a value ``check_setting`` refuses.
    """
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {what} is a mapping of settings, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(table))
    if unknown:
        raise SpecError(f"{source}: unknown key {unknown[0]!r}; accepted keys: {', '.join(table)}")
    values = {}
    for key, setting in table.items():
        if key not in raw:
            if setting.default is REQUIRED:
                raise SpecError(f"{source}: missing key {key!r} ({setting.help})")
            values[key] = copy.deepcopy(setting.default)
        elif raw[key] is None and setting.default is None:
            values[key] = None
        elif setting.raw:
            values[key] = raw[key]
        else:
            values[key] = check_setting(source, key, raw[key], setting)
    return values
