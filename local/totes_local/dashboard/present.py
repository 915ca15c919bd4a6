"""Turning query results into what a person reads: figures, freshness, tables and charts.

Pure functions, so the page (:mod:`totes_local.dashboard.app`) only lays things
out. Money stays ``Decimal`` and is shown with two decimals; only a chart's marks
are placed with floats (a pixel has no cents), while every figure a person reads,
tooltips included, comes from the exact value.
"""
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Mapping

import altair as alt
import pandas as pd
from pandas.io.formats.style import Styler

from totes_local.queries import Chart, Result

#: the warehouse should show every change within this long (the pipeline's promise).
FRESHNESS_TARGET = timedelta(minutes=30)
ROW_HEIGHT = 20
PANEL_WIDTH = 300
PANEL_HEIGHT = 160
LABEL_LIMIT = 160


@dataclass(frozen=True)
class Figure:
    """One headline number: a label and its display text."""

    label: str
    value: str


@dataclass(frozen=True)
class Freshness:
    """What the page says about how recent the warehouse is, and whether that is too old."""

    text: str
    stale: bool


def money(value: Decimal | None) -> str:
    """An exact amount with thousands separators and two decimals."""
    return "" if value is None else f"{value:,.2f}"


def count(value: int) -> str:
    """A whole number with thousands separators."""
    return f"{int(value):,}"


def headline_rows(frame: pd.DataFrame) -> list[list[Figure]]:
    """Counts across currencies, then revenue, then unpaid amounts per currency (never summed)."""
    currencies = list(frame.itertuples(index=False))
    return [
        [Figure("Sales orders", count(frame["orders"].sum())),
         Figure("Unpaid payments", count(frame["unpaid_payments"].sum()))],
        [Figure(f"Revenue {row.currency_code}", money(row.revenue)) for row in currencies],
        [Figure(f"Unpaid {row.currency_code}", money(row.unpaid_amount)) for row in currencies],
    ]


def _ago(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 120:
        return f"{minutes} min ago"
    hours = minutes // 60
    return f"{hours} h ago" if hours < 48 else f"{hours // 24} days ago"


def freshness(row: Mapping[str, Any], now: datetime) -> Freshness:
    """Describe the last load and the age of the newest data it brought in."""
    loaded, data_as_of = row["last_loaded_at"], row["data_as_of"]
    text = (f"Last load {loaded:%Y-%m-%d %H:%M:%S} UTC ({_ago(now - loaded)}); "
            f"newest data from an ingest run started {data_as_of:%Y-%m-%d %H:%M:%S} UTC "
            f"({_ago(now - data_as_of)}); {count(row['loads'])} loads, "
            f"{count(row['rows_loaded'])} rows.")
    return Freshness(text, stale=now - data_as_of > FRESHNESS_TARGET)


def table(result: Result) -> Styler:
    """The result as a table whose exact numerics show two decimals."""
    formats = {column: money for column in result.numeric_columns}
    return result.frame.style.format(formats, na_rep="")


def _is_date(series: pd.Series) -> bool:
    values = series.dropna()
    return not values.empty and isinstance(values.iloc[0], date)


def plottable(result: Result) -> pd.DataFrame:
    """A copy for drawing: numerics as floats (positions only), dates as timestamps."""
    frame = result.frame.copy()
    for column in frame.columns:
        if column in result.numeric_columns:
            frame[column] = frame[column].astype(float)
        elif _is_date(frame[column]):
            frame[column] = pd.to_datetime(frame[column])
    return frame


def _encoding_type(frame: pd.DataFrame, column: str) -> str:
    if pd.api.types.is_datetime64_any_dtype(frame[column]):
        return "T"
    return "Q" if pd.api.types.is_numeric_dtype(frame[column]) else "N"


def _tooltip(result: Result, frame: pd.DataFrame) -> list[alt.Tooltip]:
    tips = []
    for column in frame.columns:
        kind = _encoding_type(frame, column)
        if column in result.numeric_columns:
            tips.append(alt.Tooltip(f"{column}:Q", format=",.2f"))
        elif kind == "T":
            tips.append(alt.Tooltip(f"{column}:T", format="%Y-%m-%d"))
        else:
            tips.append(alt.Tooltip(f"{column}:{kind}"))
    return tips


def _bar(frame: pd.DataFrame, spec: Chart, tooltip: list) -> alt.Chart:
    """Bars along whichever axis is quantitative; ``color`` groups, ``facet`` stacks panels."""
    x, y = spec.column("x"), spec.column("y")
    color, facet = spec.column("color"), spec.column("facet")
    horizontal = _encoding_type(frame, x) == "Q"
    labels = alt.Axis(labelLimit=LABEL_LIMIT)
    if horizontal:
        encoding = {"x": alt.X(f"{x}:Q"), "y": alt.Y(f"{y}:N", sort=None, title=None, axis=labels)}
    else:
        encoding = {"x": alt.X(f"{x}:N", sort=None, title=None, axis=labels), "y": alt.Y(f"{y}:Q")}
    if color:
        encoding["color"] = alt.Color(f"{color}:N")
        offset = alt.YOffset if horizontal else alt.XOffset
        encoding["yOffset" if horizontal else "xOffset"] = offset(f"{color}:N")
    if facet:
        encoding["color"] = alt.Color(f"{facet}:N", legend=None)
    chart = alt.Chart(frame).mark_bar().encode(tooltip=tooltip, **encoding)
    if horizontal:
        step = ROW_HEIGHT * (frame[color].nunique() if color else 1)
        chart = chart.properties(height=alt.Step(step))
    if facet:
        chart = chart.properties(width=PANEL_WIDTH).facet(row=alt.Row(f"{facet}:N", title=None))
        chart = chart.resolve_scale(x="independent", y="independent")
    return chart


#: the field a line chart of several measures folds their names into.
MEASURE = "measure"


def _line(frame: pd.DataFrame, spec: Chart, tooltip: list) -> alt.Chart:
    """Lines over time: several ``y`` measures share one axis, ``panels`` measures get one each.

    A panel each, one above the other with its own scale, is for measures in
    different units (money and counts), which one axis would squash.
    """
    x, color = spec.column("x"), spec.column("color")
    panels = "panels" in spec.channels
    measures = spec.channels["panels" if panels else "y"]
    chart = alt.Chart(frame).mark_line(point=True)
    encoding = {"x": alt.X(f"{x}:T", title=None, axis=alt.Axis(format="%b %Y"))}
    if len(measures) > 1:
        chart = chart.transform_fold(list(measures), as_=[MEASURE, "amount"])
        encoding["y"] = alt.Y("amount:Q", title=None if panels else "amount")
        if not panels:
            encoding["strokeDash"] = alt.StrokeDash(f"{MEASURE}:N")
    else:
        encoding["y"] = alt.Y(f"{measures[0]}:Q")
    if color:
        encoding["color"] = alt.Color(f"{color}:N")
    chart = chart.encode(tooltip=tooltip, **encoding)
    if panels and len(measures) > 1:
        chart = chart.properties(height=PANEL_HEIGHT).facet(
            row=alt.Row(f"{MEASURE}:N", title=None, sort=list(measures)))
        chart = chart.resolve_scale(y="independent")
    return chart


def _arc(frame: pd.DataFrame, spec: Chart, tooltip: list) -> alt.Chart:
    return alt.Chart(frame).mark_arc(innerRadius=50).encode(
        theta=alt.Theta(f"{spec.column('theta')}:Q"),
        color=alt.Color(f"{spec.column('color')}:N"), tooltip=tooltip)


_MARKS = {"bar": _bar, "line": _line, "arc": _arc}


def chart(result: Result, spec: Chart) -> alt.Chart | None:
    """The chart the query's header asks for, or None when it is best read as a table."""
    draw = _MARKS.get(spec.kind)
    if draw is None or result.frame is None or result.frame.empty:
        return None
    frame = plottable(result)
    return draw(frame, spec, _tooltip(result, frame))
