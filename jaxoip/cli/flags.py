"""Command-line flags derived from a config dataclass, so that each option is declared once: in its field.

A field becomes the option `--field-name`, typed by its annotation (int, float, str, bool, `X | None`,
`Literal[...]`, `tuple[X, ...]` written as a comma list, and lists of layers `tuple[tuple[X, Y, ...], ...]`
written as a comma list of colon-separated items, `32:3:relu,64:3:relu`), with the dataclass's default and
the help in `dataclasses.field(metadata=...)` (or `add_flags`' `helps`):

- ``"help"``: the option's help text;
- ``"flag"``: the option's name where it is not the field's (``"--lr"``), or False for no option;
- ``"choices"``: the allowed values of a str field (a `Literal` annotation gives them too).

`X | None` fields also take the word ``none``. Values are checked by the dataclass itself (its
`__post_init__`), so a bad one is still one `error: ...` line from `jaxoip.cli.run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, Literal


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)".strip()


class ArgumentParser(argparse.ArgumentParser):
    """A bad option is one line, like every other user error: `error: ...` and where the options are listed."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` lists the options)\n")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser whose `--help` shows every option's default and whose errors are one line."""
    return ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def flag_fields(cls: type, only: Collection[str] | None = None) -> list[dataclasses.Field]:
    """The fields of `cls` that are options: not marked ``flag: False``, and in `only` when given."""
    return [
        f
        for f in dataclasses.fields(cls)
        if f.init and f.metadata.get("flag", True) is not False and (only is None or f.name in only)
    ]


def flag_name(f: dataclasses.Field, prefix: str = "") -> str:
    """`--prefix-field-name`, or `--prefix-` + the metadata's name."""
    name = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return "--" + prefix + name.removeprefix("--")


def _dest(f: dataclasses.Field, prefix: str) -> str:
    return prefix.replace("-", "_") + f.name


def _item_types(annotation: Any) -> tuple[type, ...] | None:
    """The part types of a fixed tuple `tuple[int, int, str]` (an item of a layer list), else None."""
    if typing.get_origin(annotation) is not tuple:
        return None
    args = typing.get_args(annotation)
    if not args or Ellipsis in args or any(a not in (int, float, str) for a in args):
        return None
    return args


def _items_converter(parts: tuple[type, ...], optional: bool):
    """The `type=` of a layer list: '32:3:relu,64:3:relu' -> ((32, 3, 'relu'), (64, 3, 'relu'))."""
    form = ":".join(p.__name__.upper() for p in parts)

    def convert(text: str):
        if optional and text.strip().lower() == "none":
            return None
        out = []
        for item in (v.strip() for v in text.split(",")):
            if not item:
                continue
            values = [v.strip() for v in item.split(":")]
            try:
                if len(values) != len(parts):
                    raise ValueError
                out.append(tuple(p(v) for p, v in zip(parts, values)))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected items {form} separated by commas; got {item!r} in {text!r}"
                ) from None
        return tuple(out)

    convert.__name__ = form
    return convert


def _converter(kind: type, optional: bool, sequence: bool):
    """The `type=` of an option: text -> value (comma lists for tuples, 'none' -> None if optional)."""

    def convert(text: str):
        if optional and text.strip().lower() == "none":
            return None
        if not sequence:
            return kind(text)
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}s separated by commas; got {text!r}") from None

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'".
    return convert


def _argument(f: dataclasses.Field, annotation: Any, default: Any, help_text: str | None = None) -> dict[str, Any]:
    """add_argument's keywords for one field (all but the name); `help_text` where the field has no help."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        (annotation,) = (a for a in args if a is not type(None))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    help_text = f.metadata.get("help", help_text or "").replace("%", "%%")
    if annotation is bool:
        return dict(action=argparse.BooleanOptionalAction, default=default, help=help_text)
    choices = f.metadata.get("choices") or (args if origin is Literal else None)
    sequence = origin is tuple and len(args) == 2 and args[1] is Ellipsis
    parts = _item_types(args[0]) if sequence else None
    if parts is not None:  # A list of layers: items of colon-separated parts.
        if default is not None:
            default = ",".join(":".join(map(str, item)) for item in default)
        return dict(type=_items_converter(parts, optional), default=default, help=help_text)
    kind = type(args[0]) if origin is Literal else args[0] if sequence else annotation
    if kind not in (int, float, str):
        raise TypeError(f"no command-line option for {f.name}: {annotation}")
    if sequence and default is not None:
        default = ",".join(map(str, default))  # Shown as typed; argparse converts a text default.
    return dict(type=_converter(kind, optional, sequence), default=default, choices=choices, help=help_text)


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    only: Collection[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
) -> dict[str, argparse.Action]:
    """Adds one option per field of the dataclass `cls` (see the module docstring); returns them by field.

    `prefix` ("oip-") names the options of a nested config; `defaults` replaces the dataclass's
    defaults where a command starts elsewhere; `helps` gives the help of fields that declare none.
    """
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    actions = {}
    for f in flag_fields(cls, only):
        default = defaults.get(f.name, f.default)
        if default is dataclasses.MISSING:
            raise TypeError(f"no default for the command-line option of {cls.__name__}.{f.name}")
        name, keywords = flag_name(f, prefix), _argument(f, hints[f.name], default, (helps or {}).get(f.name))
        if "type" in keywords and not keywords.get("choices"):
            keywords["metavar"] = name.removeprefix("--").replace("-", "_").upper()
        actions[f.name] = parser.add_argument(name, dest=_dest(f, prefix), **keywords)
    return actions


def flag_values(
    cls: type, args: argparse.Namespace, *, prefix: str = "", only: Collection[str] | None = None
) -> dict[str, Any]:
    """The values of the options `add_flags(parser, cls, prefix=..., only=...)` added, by field name."""
    return {f.name: getattr(args, _dest(f, prefix)) for f in flag_fields(cls, only)}


def config_from_args(
    cls: type, args: argparse.Namespace, *, prefix: str = "", only: Collection[str] | None = None, **fields
):
    """`cls` built from its options in `args` (as `flag_values`), `fields` on top; validated by `cls`."""
    return cls(**{**flag_values(cls, args, prefix=prefix, only=only), **fields})
