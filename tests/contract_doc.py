"""Reads the vectors out of docs/contract.md: each `<!-- vector KIND key=value ... -->` comment and
the fenced block after it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "contract.md"

_VECTOR = re.compile(r"<!-- vector (?P<head>[^>]*?) -->\s*```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Vector:
    kind: str
    attrs: dict[str, str]
    body: str
    line: int


def vectors(kind: str | None = None) -> list[Vector]:
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in _VECTOR.finditer(text):
        head = m.group("head").split()
        attrs = dict(part.split("=", 1) for part in head[1:])
        v = Vector(head[0], attrs, m.group("body"), text.count("\n", 0, m.start()) + 1)
        if kind is None or v.kind == kind:
            out.append(v)
    return out
