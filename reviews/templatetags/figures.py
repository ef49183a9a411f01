"""How the review pages draw numbers: one format for rates and scores, and the decisions-per-hour chart.

Selectors return plain data (``reviews.metrics.metrics_compute``); the geometry of the chart and the format of
a number are decided here, beside the templates that use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()

RATE_DECIMALS = 3
MISSING = "\N{EM DASH}"
MINUS = "\N{MINUS SIGN}"


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN reads as missing


def _fixed(number: float, decimals: int) -> str:
    text = f"{abs(number):,.{decimals}f}"
    negative = number < 0 and text.strip("0.,") != ""  # -0.0001 at 3 decimals is 0.000, not -0.000
    return (MINUS if negative else "") + text


@register.filter
def rate(value: Any) -> str:
    """A rate or a score (accuracy, recall, kappa, ...) with three decimals on every page: 1 -> "1.000"."""
    number = _number(value)
    return MISSING if number is None else _fixed(number, RATE_DECIMALS)


def _decimals_for(metric: str) -> int:
    """Milliseconds and token counts are whole numbers; every other metric is a rate or a score."""
    return 0 if metric.endswith("_ms") or "tokens" in metric else RATE_DECIMALS


@register.filter
def metric(value: Any, name: str) -> str:
    """A run metric by its name (``latency_p95_ms`` -> "12,400"; ``recall`` -> "0.970")."""
    number = _number(value)
    return MISSING if number is None else _fixed(number, _decimals_for(name))


@register.filter
def metric_change(value: Any, name: str) -> str:
    """A difference between two runs' metric, signed: "+0.050", "\N{MINUS SIGN}0.020", "0.000"."""
    number = _number(value)
    if number is None:
        return MISSING
    text = _fixed(number, _decimals_for(name))
    return "+" + text if number > 0 and text.strip("0.,") else text


# The decisions-per-hour chart, in SVG user units (the SVG scales to its card's width).
BAR_PITCH = 14
BAR_WIDTH = 12
PLOT_HEIGHT = 80
LEFT = 34  # room for the value labels left of the y axis
RIGHT = 14  # half an hour label past the last bar
TOP = 8  # half a label above the max line
BOTTOM = 20  # the hour labels
HOUR_LABEL_EVERY = 3


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    hour: datetime
    count: int


@dataclass(frozen=True)
class Label:
    x: int
    y: int
    text: str | int


@dataclass(frozen=True)
class HourlyChart:
    width: int
    height: int
    bars: list[Bar]
    # The axes: y from (left, top) to (left, baseline); x from (left, baseline) to (right, baseline).
    left: int
    right: int
    top: int
    baseline: int
    value_labels: list[Label]  # the max value at the top of the y axis, 0 at the bottom
    hour_labels: list[Label]  # every third hour, under its bar


@register.simple_tag
def hourly_chart(hourly: Sequence[Mapping[str, Any]]) -> HourlyChart:
    """Geometry for ``hourly`` (``[{"hour": datetime, "count": int}, ...]``, oldest first).

    Usage: ``{% hourly_chart metrics.hourly as chart %}``, then draw ``chart.bars`` and the labels.
    """
    peak = max((int(h["count"]) for h in hourly), default=0)
    scale = peak or 1
    baseline = TOP + PLOT_HEIGHT
    bars = []
    hour_labels = []
    for index, h in enumerate(hourly):
        height = round(PLOT_HEIGHT * int(h["count"]) / scale)
        x = LEFT + 2 + index * BAR_PITCH
        bars.append(Bar(x, baseline - height, BAR_WIDTH, height, h["hour"], int(h["count"])))
        local = timezone.localtime(h["hour"]) if timezone.is_aware(h["hour"]) else h["hour"]
        if local.hour % HOUR_LABEL_EVERY == 0:
            hour_labels.append(Label(x + BAR_WIDTH // 2, baseline + BOTTOM - 6, local.strftime("%H:00")))
    right = LEFT + 2 + len(hourly) * BAR_PITCH
    value_labels = [Label(LEFT - 5, TOP + 4, peak), Label(LEFT - 5, baseline + 4, 0)]
    return HourlyChart(
        width=right + RIGHT,
        height=baseline + BOTTOM,
        bars=bars,
        left=LEFT,
        right=right,
        top=TOP,
        baseline=baseline,
        value_labels=value_labels,
        hour_labels=hour_labels,
    )
