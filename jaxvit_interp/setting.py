"""Settings declared once: each field of a settings dataclass carries its help, bounds and flag.

A field is declared with :func:`setting`::

    chunk_images: int = setting(64, "images per resumable chunk", least=1)

and everything else comes from that one declaration: the check of a value
(:meth:`Setting.check`, which the dataclass's ``__post_init__`` runs through
:func:`check_fields`), the reading of a TOML table (:func:`from_table`: unknown keys and bad
values named with their dotted key, ``analysis.autoencoder.max_epochs``), and the command-line
flag (:meth:`Setting.parse` reads its text, :meth:`Setting.help_text` states the true default).
A value the flag accepts is one the dataclass accepts, and the other way round, because both
ask :meth:`Setting.problem`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxvit_interp.errors import InputError

# The key of a field's metadata that holds its Setting.
METADATA_KEY = "setting"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setting:
    """How one field of a settings dataclass is described, bounded and given on a command line.

    Attributes:
      help: what the setting does, for ``--help`` (the default is added by :meth:`help_text`).
      type: ``int``, ``float`` or ``str``: the type of the value (of each item when ``many``).
      least: smallest allowed value (inclusive), or None.
      more_than, less_than: exclusive bounds, or None.
      choices: the allowed values of a ``str`` setting.
      many: the value is a non-empty tuple of items (a TOML list; on a command line, items
        separated by commas); a single item is taken as a tuple of one.
      distinct: with ``many``, no item may be listed twice (each item is work to do once).
      word: a word allowed besides the numbers (``"all"``).
      none: what None means, for a setting that may be None (None: it may not).
      table: the settings dataclass of a nested table (no flag; a dict of its fields is read
        with :func:`from_table`).
      flag: the command-line flag (default ``--`` and the name with dashes); ``""``: no flag.
      flag_unit: the flag's value times this is the setting's (``--memory-budget-mb``: 2**20).
      name, default: the field's, filled in by :func:`declared`.
    """

    help: str
    type: type = int
    least: float | None = None
    more_than: float | None = None
    less_than: float | None = None
    choices: tuple[str, ...] | None = None
    many: bool = False
    distinct: bool = False
    word: str | None = None
    none: str | None = None
    table: type | None = None
    flag: str | None = None
    flag_unit: int = 1
    name: str = ""
    default: Any = None

    # ---- the one check -------------------------------------------------------------------

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, as ``"must be ..., got ..."``; None when it is allowed."""
        if value is None:
            return None if self.none is not None else "must be given, got None"
        if self.table is not None:
            if isinstance(value, self.table):
                return None
            return f"must be a table of {self.table.__name__} fields, got {value!r}"
        if self.word is not None and value == self.word:
            return None
        if self.many:
            items = (value,) if isinstance(value, str) else value
            if (
                not isinstance(items, list | tuple)
                or not items
                or any(self._item_problem(item) for item in items)
            ):
                return f"must be a non-empty list, each {self.described()}, got {value!r}"
            if self.distinct and len(set(items)) != len(items):
                return f"must be a list naming each item once, got {value!r}"
            return None
        problem = self._item_problem(value)
        if problem is not None and self.word is not None:
            return f"must be {self.word!r} or {self.described()}, got {value!r}"
        return problem

    def _item_problem(self, value: Any) -> str | None:
        if self.choices is not None:
            return None if value in self.choices else f"must be {self.described()}; got {value!r}"
        wrong = f"must be {_A[self.type]}, got {value!r}"
        if self.type is str:
            return None if isinstance(value, str) else wrong
        if isinstance(value, bool):  # True is an int to Python; a count given as true is a slip
            return wrong
        if not isinstance(value, (int, np.integer) if self.type is int else _NUMBER):
            return wrong
        if isinstance(value, float | np.floating) and math.isnan(value):
            return wrong
        low, high = self.more_than, self.less_than
        if (
            (self.least is not None and value < self.least)
            or (low is not None and not value > low)
            or (high is not None and not value < high)
        ):
            return f"must be {self.described()}, got {value}"
        return None

    def described(self) -> str:
        """One allowed item in words: ``"one of umap, tsne"``, ``"an integer of at least 1"``."""
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        low, high = self.more_than, self.less_than
        bound = (
            f" of at least {self.least}"
            if self.least is not None
            else f" in ({low}, {high})"
            if low is not None and high is not None
            else f" more than {low}"
            if low is not None
            else f" less than {high}"
            if high is not None
            else ""
        )
        return _A[self.type] + bound

    def check(self, key: str, value: Any) -> Any:
        """``value`` in its stored form (a list as a tuple, a NumPy integer as an int, a table
        as its dataclass), or an :class:`InputError` ``"<key> must be ..., got ..."``."""
        if self.table is not None and isinstance(value, dict):
            return from_table(self.table, value, prefix=f"{key}.")
        problem = self.problem(value)
        if problem is not None:
            raise InputError(f"{key} {problem}")
        if self.many and value is not None:
            return tuple(_plain(v) for v in ((value,) if isinstance(value, str) else value))
        return _plain(value)

    # ---- the command line ----------------------------------------------------------------

    @property
    def flag_name(self) -> str:
        """The command-line flag, or ``""`` for a setting that has none."""
        if self.table is not None:
            return ""
        return self.flag if self.flag is not None else "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """The value a flag's ``text`` gives, checked; a ``ValueError`` says what is wrong with
        it (``"must be an integer of at least 1, got 0"``) without the flag, which argparse adds."""
        if self.word is not None and text == self.word:
            return text
        items = text.split(",") if self.many else [text]
        convert = float if self.flag_unit != 1 else self.type  # a flag in units: any number
        try:
            values = [item if convert is str else convert(item) for item in items]
        except ValueError:
            if convert is float and self.type is not float:
                raise ValueError(f"must be a number, got {text!r}") from None
            raise ValueError(self.problem(text)) from None
        value = values if self.many else values[0]  # a list, told as a TOML list would be
        if self.flag_unit != 1:
            if not value > 0:  # NaN too; a budget of 0 MiB is a slip, not a request for 1 byte
                raise ValueError(f"must be more than 0, got {text}")
            value = int(value * self.flag_unit)
            if self.problem(value) is not None:
                raise ValueError(f"must be at least {self.least / self.flag_unit:.3g}, got {text}")
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(problem)
        return tuple(value) if self.many else value

    def text(self, value: Any) -> str:
        """``value`` as the flag's text: :meth:`parse` of it gives ``value`` back."""
        if self.word is not None and value == self.word:
            return value
        if self.many:
            return ",".join(map(str, (value,) if isinstance(value, str) else value))
        if self.flag_unit != 1:
            return repr(value / self.flag_unit)
        return str(value)

    @property
    def metavar(self) -> str | None:
        """How ``--help`` shows the flag's value."""
        if self.choices is not None:
            item = "{" + ",".join(self.choices) + "}"
            return f"{item}[,...]" if self.many else item
        if self.many:
            return "N[,N...]"
        if self.word is not None:
            return f"N|{self.word}"
        return {int: "N", float: "X", str: "TEXT"}[self.type] if self.flag_unit == 1 else "MIB"

    def help_text(self) -> str:
        """The help of the flag, ending with its default: the field's, as the flag writes it, or
        what None means."""
        default = self.none if self.default is None else self.text(self.default)
        # A bound other than "0 or more" / "1 or more" is not what a count suggests: said.
        bound = f"at least {self.least}; " if self.least is not None and self.least > 1 else ""
        return f"{self.help} ({bound}default: {default})"


_A = {int: "an integer", float: "a number", str: "text"}
_NUMBER = (int, float, np.integer, np.floating)


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it is (settings are written as JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def setting(default: Any, help: str, **how: Any) -> Any:  # noqa: A002 (the word argparse uses)
    """A dataclass field with ``default`` whose :class:`Setting` is ``Setting(help=help, **how)``."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: Setting(help=help, **how)})


def declared(cls: type) -> dict[str, Setting]:
    """Each field of the settings dataclass ``cls`` by name, its :class:`Setting` with its name and
    default filled in."""
    return {
        f.name: dataclasses.replace(f.metadata[METADATA_KEY], name=f.name, default=f.default)
        for f in dataclasses.fields(cls)
    }


def check_fields(obj: Any) -> None:
    """Check every field of the frozen settings dataclass ``obj`` and store it in its stored form
    (:meth:`Setting.check`); for ``__post_init__``."""
    for name, how in declared(type(obj)).items():
        object.__setattr__(obj, name, how.check(name, getattr(obj, name)))


def from_table(cls: type, table: dict[str, Any], prefix: str = "") -> Any:
    """The settings dataclass ``cls`` from a table of some of its fields (a TOML table, a dict
    written by ``to_dict``). An unknown key or a bad value is an :class:`InputError` naming it
    as ``prefix`` + its name (``prefix="analysis."``: ``analysis.batch_size``)."""
    if not isinstance(table, dict):
        raise InputError(f"{prefix.rstrip('.') or 'settings'} must be a table, got {table!r}")
    fields = declared(cls)
    unknown = [key for key in table if key not in fields]
    if unknown:
        raise InputError(
            f"unknown key{'s' * (len(unknown) > 1)} {', '.join(repr(prefix + k) for k in unknown)}"
            f" (known keys: {', '.join(prefix + k for k in fields)})"
        )
    return cls(**{key: fields[key].check(prefix + key, value) for key, value in table.items()})
