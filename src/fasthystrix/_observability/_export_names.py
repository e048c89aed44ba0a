"""What name a circuit is published under by the exporters with label values (Prometheus, OpenTelemetry).

A circuit's name is any ``str``, and label or attribute values must be valid UTF-8:
a name with surrogate code points (what ``surrogateescape`` makes of bytes that are
not UTF-8) would make the whole Prometheus scrape fail, and an OTLP export too. Such
a name is published with every surrogate replaced by U+FFFD; any other name as it is
(the text formats escape what needs escaping). Two circuits must not publish the same
series, so a replaced name equal to another circuit's published name is left out of
the collection and counted instead.
"""

from __future__ import annotations

import dataclasses
import re

from ._cumulative import CircuitReading

__all__ = ["REPLACEMENT", "exportable", "label_value"]

#: What each surrogate code point of a name becomes.
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def label_value(name: str) -> str:
    """``name`` as a label value: every surrogate code point replaced by U+FFFD."""
    if name.isascii():
        return name
    return _SURROGATE.sub(REPLACEMENT, name)


def exportable(readings: list[CircuitReading]) -> tuple[list[CircuitReading], int]:
    """The readings to publish, in their order, each named by its label value; and how many were left out.

    A name that needed no replacement always keeps its series; one that did is left out
    when its label value is already taken (by such a name, or by an earlier replaced one).
    """
    values = [label_value(reading.name) for reading in readings]
    taken = {value for reading, value in zip(readings, values, strict=True) if value == reading.name}
    published: list[CircuitReading] = []
    skipped = 0
    for reading, value in zip(readings, values, strict=True):
        if value == reading.name:
            published.append(reading)
        elif value in taken:
            skipped += 1
        else:
            taken.add(value)
            published.append(dataclasses.replace(reading, name=value))
    return published, skipped
