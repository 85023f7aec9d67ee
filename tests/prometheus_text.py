"""A strict reader of the Prometheus text format 0.0.4, for checking wsgate's metrics page.

It checks what a Prometheus server relies on: one ``# HELP`` and one ``# TYPE`` per family,
before its samples; sample names that belong to the family (``_bucket``, ``_sum``, ``_count``
for a histogram); label values escaped; and histograms whose buckets are cumulative, ordered by
``le``, end at ``le="+Inf"``, and whose ``_count`` equals the ``+Inf`` bucket.
https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Family", "Page", "parse"]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    help: str
    type: str
    #: (sample name, labels) -> value, in page order.
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


@dataclass
class Page:
    families: dict[str, Family]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` (0 if the series does not exist yet:
        Prometheus counters start at 0)."""
        family = self.families[_family_of(name, self.families)]
        return family.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        family = self.families[_family_of(name, self.families)]
        return {labels: v for (n, labels), v in family.samples.items() if n == name}

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """(le, cumulative count) of one histogram series, in page order."""
        out = []
        for (n, ls), v in self.families[name].samples.items():
            d = dict(ls)
            le = d.pop("le", None)
            if n == f"{name}_bucket" and d == labels and le is not None:
                out.append((float(le), v))
        return out


def _family_of(sample: str, families: dict[str, Family]) -> str:
    if sample in families:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and base in families and families[base].type == "histogram":
            return base
    raise AssertionError(f"sample {sample} belongs to no declared family")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str | None) -> Labels:
    if not text:
        return ()
    pairs, pos = [], 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m is not None, f"bad labels at {text[pos:]!r}"
        pairs.append((m.group(1), _unescape(m.group(2))))
        pos = m.end()
    names = [n for n, _ in pairs]
    assert len(set(names)) == len(names), f"repeated label in {text!r}"
    return tuple(sorted(pairs))


def parse(text: str) -> Page:
    """Parse and check a whole page; raises AssertionError on anything malformed."""
    assert text.endswith("\n"), "the page must end with a line feed"
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps, f"second HELP for {name}"
            helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in families, f"second TYPE for {name}"
            assert name in helps, f"TYPE before HELP for {name}"
            families[name] = Family(name, helps[name], kind)
            current = name
            continue
        assert not line.startswith("#") and line, f"unexpected line {line!r}"
        m = _SAMPLE.match(line)
        assert m is not None, f"bad sample line {line!r}"
        name, labels, value = m.group(1), _labels(m.group(2)), float(m.group(3))
        family = _family_of(name, families)
        assert family == current, f"{name} is outside its family's block"
        key = (name, labels)
        assert key not in families[family].samples, f"duplicate sample {line!r}"
        families[family].samples[key] = value
    for family in families.values():
        if family.type == "histogram":
            _check_histogram(family)
        elif family.type == "counter":
            assert all(v >= 0 for v in family.samples.values()), family
    return Page(families)


def _check_histogram(family: Family) -> None:
    name = family.name
    by_series: dict[Labels, list[tuple[float, float]]] = {}
    sums: dict[Labels, float] = {}
    counts: dict[Labels, float] = {}
    for (sample, labels), value in family.samples.items():
        if sample == f"{name}_bucket":
            d = dict(labels)
            le = d.pop("le")
            by_series.setdefault(tuple(sorted(d.items())), []).append((float(le), value))
        elif sample == f"{name}_sum":
            sums[labels] = value
        elif sample == f"{name}_count":
            counts[labels] = value
        else:
            raise AssertionError(f"{sample} in histogram {name}")
    assert set(by_series) == set(sums) == set(counts), family
    for labels, buckets in by_series.items():
        les = [le for le, _ in buckets]
        assert les == sorted(les) and les[-1] == math.inf, f"{name}{labels}: le {les}"
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{name}{labels}: not cumulative {values}"
        assert counts[labels] == values[-1], f"{name}{labels}: _count != +Inf bucket"
