"""Turning one config value, as written in YAML or on the command line, into its typed and checked form."""

from __future__ import annotations

import dataclasses
import difflib

from bloodcell.core.errors import ConfigError

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}


class BadValue:
    """Builds the error for a value of ``key`` that does not fit, with an example of one that does."""

    def __init__(self, key: str, value, source: str, f: dataclasses.Field):
        self.key, self.value, self.source, self.field = key, value, source, f

    def __call__(self, expected: str) -> ConfigError:
        meta = self.field.metadata
        example = meta.get("example")
        if example is None:
            example = meta["choices"][0] if meta.get("choices") else self.field.default
        return ConfigError(
            f"{self.key}: expected {expected}, got {self.value!r} ({self.source}). "
            f"Fix: e.g. --set {self.key}={example} (or `{self.key}: {example}` in the recipe)."
        )


def to_bool_or_path(value, bad: BadValue):
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in TRUE:
            return True
        if low in FALSE:
            return False
        return value
    raise bad("true, false or a weight file path")


def to_bool(value, bad: BadValue) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise bad("true or false")


def to_int(value, bad: BadValue) -> int:
    if isinstance(value, bool):
        raise bad("an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise bad("an integer") from None
    if not isinstance(value, int):
        raise bad("an integer")
    return value


def to_float(value, bad: BadValue) -> float:
    if isinstance(value, bool):
        raise bad("a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise bad("a number") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise bad("a finite number")
    return out


def to_str(value, bad: BadValue, name: str, choices) -> str:
    if name == "channels_last" and isinstance(value, bool):
        value = "on" if value else "off"
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise bad("a string")
    out = str(value).strip()
    if choices:
        low = out.lower()
        if low not in choices:
            close = difflib.get_close_matches(low, choices, n=1)
            raise bad(f"one of {', '.join(choices)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        out = low
    return out


def check_range(out, meta: dict, bad: BadValue):
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (out < lo or (meta.get("lo_open") and out == lo)):
        raise bad(f"a value {'>' if meta.get('lo_open') else '>='} {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and out > hi:
        raise bad(f"a value <= {hi}" + (f" and >= {lo}" if lo is not None else ""))
    return out
