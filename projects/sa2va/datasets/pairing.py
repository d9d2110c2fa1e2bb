"""File-name patterns with named fields, and pairing of images with their masks through them.

A pattern is a file name in which ``{field}`` stands for a part that varies, e.g. ``"{id}_img.tif"``
and ``"{id}_vessels.gif"``: the image ``07_img.tif`` has ``id = "07"``, so its mask is
``07_vessels.gif``. Rules:

* a field is ``{name}`` with a Python identifier as its name; format specs (``{stem:.2}``) and
  conversions are rejected: put literal text around the field instead;
* a field matches one or more characters; when a name can be split in several ways, the earlier
  fields take the longest values (regular-expression greediness); a field used twice must have
  the same value at both places;
* ``*`` matches any run of characters (also none), e.g. ``"{stem}_mask.*"`` for any extension;
* ``{{`` and ``}}`` are literal braces;
* a pattern is a file name, not a path (no ``/``); names are compared case-sensitively.

Every image has the field ``stem`` (its file name without the extension) besides the fields of
the image pattern, so ``"{stem}_mask.png"`` works with any image pattern (or none).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

__all__ = ["NamePattern", "PartnerIndex", "PatternError", "image_fields"]

STEM = "stem"


class PatternError(ValueError):
    """A file-name pattern cannot be used (the message names the pattern and what is wrong)."""


@dataclass(frozen=True)
class _Piece:
    literal: str
    field: str | None


class NamePattern:
    """A file-name pattern with named fields (see the module docstring).

    Args:
        pattern: e.g. ``"{id}_img.tif"``, ``"{stem}_1stHO.png"``, ``"{stem}_mask.*"``.

    Raises:
        PatternError: empty pattern, a path, an unnamed/indexed field, a format spec or conversion.
    """

    def __init__(self, pattern: str) -> None:
        if not pattern:
            raise PatternError("empty file-name pattern")
        if "/" in pattern or "\\" in pattern:
            raise PatternError(f"pattern {pattern!r} is a path; give a file name pattern (no folders)")
        self.pattern = pattern
        pieces: list[_Piece] = []
        try:
            parsed = list(string.Formatter().parse(pattern))
        except ValueError as err:
            raise PatternError(
                f"pattern {pattern!r}: {err} (write {{{{ and }}}} for literal braces)"
            ) from err
        for literal, field, spec, conversion in parsed:
            if field is not None:
                if not field.isidentifier():
                    raise PatternError(
                        f"pattern {pattern!r}: field {{{field}}} must be a name such as {{id}} or {{stem}}"
                    )
                if spec or conversion:
                    shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                    raise PatternError(
                        f"pattern {pattern!r}: {{{shown}}} has a format spec or conversion; fields are plain "
                        "names: put the text around the varying part in the pattern instead "
                        "(e.g. '{id}_img.tif' with '{id}_vessels.gif')"
                    )
            pieces.append(_Piece(literal, field))
        self._pieces = tuple(pieces)
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(p.field for p in pieces if p.field))
        self.has_wildcard = any("*" in p.literal for p in pieces)
        self._regex = re.compile(self._regex_source())

    def _regex_source(self) -> str:
        seen: set[str] = set()
        out = []
        for piece in self._pieces:
            out.append("[^/]*".join(re.escape(part) for part in piece.literal.split("*")))
            if piece.field is not None:
                out.append(f"(?P={piece.field})" if piece.field in seen else f"(?P<{piece.field}>[^/]+)")
                seen.add(piece.field)
        return "".join(out)

    def __repr__(self) -> str:
        return f"NamePattern({self.pattern!r})"

    def match(self, name: str) -> dict[str, str] | None:
        """The field values of file name ``name``, or ``None`` when it does not fit the pattern."""
        found = self._regex.fullmatch(name)
        return None if found is None else found.groupdict()

    def fill(self, values: Mapping[str, str]) -> str:
        """The pattern with the fields in ``values`` replaced (others left as ``{name}``, ``*`` kept).

        With every field given and no ``*`` this is the exact file name (used in messages too).
        """
        out = []
        for piece in self._pieces:
            out.append(piece.literal)
            if piece.field is not None:
                out.append(values.get(piece.field, "{" + piece.field + "}"))
        return "".join(out)

    @property
    def is_exact(self) -> bool:
        """Whether :meth:`fill` gives one exact name once every field is known (no ``*``)."""
        return not self.has_wildcard


def image_fields(name: str, pattern: NamePattern | None) -> dict[str, str] | None:
    """Fields of image file ``name``: ``stem`` plus the pattern's fields (``None``: no match).

    Without a pattern every name matches and has only ``stem``.
    """
    stem = PurePath(name).stem
    if pattern is None:
        return {STEM: stem}
    values = pattern.match(name)
    if values is None:
        return None
    return {STEM: stem, **values}


def available_fields(pattern: NamePattern | None) -> tuple[str, ...]:
    """Fields an image matched by ``pattern`` provides (``stem`` always)."""
    return tuple(dict.fromkeys((STEM, *(pattern.fields if pattern else ()))))


class PartnerIndex:
    """The files of one folder that fit a partner pattern (masks, FOV masks), found by image fields.

    The key of a file is the values of the fields the partner pattern shares with the images;
    fields only the partner pattern has, and ``*``, may differ between files of one key (then an
    image has several partners, which :meth:`find` returns for the caller to refuse).

    Args:
        names: file names in the folder.
        pattern: the partner pattern.
        image_pattern: the image pattern (``None``: images provide only ``stem``).

    Raises:
        PatternError: the partner pattern shares no field with the images.
    """

    def __init__(
        self, names: Iterable[str], pattern: NamePattern, image_pattern: NamePattern | None = None
    ) -> None:
        provided = available_fields(image_pattern)
        self.pattern = pattern
        self.key_fields: tuple[str, ...] = tuple(f for f in pattern.fields if f in provided)
        if not self.key_fields:
            source = f"image pattern {image_pattern.pattern!r}" if image_pattern else "the image names"
            raise PatternError(
                f"pattern {pattern.pattern!r} shares no field with {source} (fields available: "
                f"{', '.join('{' + f + '}' for f in provided)})"
            )
        self._by_key: dict[tuple[str, ...], list[str]] = {}
        self.matching: list[str] = []
        for name in sorted(names):
            values = pattern.match(name)
            if values is None:
                continue
            self.matching.append(name)
            self._by_key.setdefault(tuple(values[f] for f in self.key_fields), []).append(name)

    def key(self, fields: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(fields[f] for f in self.key_fields)

    def find(self, fields: Mapping[str, str]) -> list[str]:
        """File names whose key equals the image's (sorted; empty when none)."""
        return list(self._by_key.get(self.key(fields), ()))

    def expected(self, fields: Mapping[str, str]) -> str:
        """The partner name for these image fields, for messages (exact when the pattern is)."""
        return self.pattern.fill({f: fields[f] for f in self.key_fields})


def describe_fields(fields: Mapping[str, str], keys: Sequence[str]) -> str:
    """``"id='07'"`` style text of the named fields (for messages)."""
    return ", ".join(f"{k}={fields[k]!r}" for k in keys)
