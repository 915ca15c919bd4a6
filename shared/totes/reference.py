"""The reference state the transform keeps, and how its changes propagate to dimensions.

``dim_counterparty`` joins ``address`` and ``dim_staff`` joins ``department``, so a
batch that changes only an address must still rewrite every counterparty whose
legal address it is, and a new staff member whose department arrived a week ago
must still get its department. The transform therefore carries the latest
version of these four small tables from run to run (as Parquet snapshots in the
processed bucket); this module is the pure part: merging a batch into the state
and choosing the dimension rows a batch changes. Reading and writing the
snapshots is the transform's I/O edge.
"""
from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from totes import star
from totes.source import primary_key

#: the source tables whose latest versions the transform keeps between runs: both sides of
#: every joined dimension (parents first).
REFERENCE_TABLES: tuple[str, ...] = tuple(dict.fromkeys(
    [spec.parent for spec in star.BUILDERS.values() if isinstance(spec, star.JoinedDimension)]
    + [spec.source for spec in star.BUILDERS.values()
       if isinstance(spec, star.JoinedDimension)]))


def merge_latest(previous: pd.DataFrame, batch: pd.DataFrame, table: str) -> pd.DataFrame:
    """Return the new state of ``table``: the latest version of every id in either frame.

    "Latest" is the most recently captured: the batch wins over the previous
    state, whatever the ``last_updated`` of either says. A row stamped in the
    future and then corrected must end up corrected, and capture never reads a
    version older than one it already read (a row read twice is read as it is now).
    """
    frames = [frame for frame in (previous, batch) if len(frame)]
    if not frames:
        return previous
    merged = star.latest_versions(pd.concat(frames, ignore_index=True), table)
    return merged.reset_index(drop=True)


def changed_ids(batch: pd.DataFrame, table: str) -> set[int]:
    """Return the ids of ``table`` that the batch touches."""
    return set(batch[primary_key(table)].tolist())


@dataclass(frozen=True)
class Propagation:
    """The dimension rows a batch changes, and the rows deferred for a missing parent.

    A counterparty whose legal address (or a staff member whose department) is not
    in the state yet is deferred, not written with nulls: when the parent arrives it
    counts as changed and brings every child referring to it along.
    """

    dimensions: Mapping[str, pd.DataFrame]
    deferred: Mapping[str, list[int]] = field(default_factory=dict)


def _children(children: pd.DataFrame, child_table: str, parent_column: str,
              changed: Mapping[str, set[int]], parent_table: str,
              parents: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    touched = (children[primary_key(child_table)].isin(changed[child_table])
               | children[parent_column].isin(changed[parent_table]))
    selected = children[touched]
    orphans = ~selected[parent_column].isin(parents[primary_key(parent_table)])
    return selected, sorted(selected.loc[orphans, primary_key(child_table)].tolist())


def propagate(state: Mapping[str, pd.DataFrame],
              changed: Mapping[str, set[int]]) -> Propagation:
    """Choose the rows to write of every dimension built from a reference table.

    ``state`` is the merged latest version of each reference table (after this
    batch) and ``changed`` the ids each table's batch touched. A plain dimension of
    a reference table (``dim_location``) gets its changed ids; a joined dimension
    gets every child that changed or whose parent did (a changed address rewrites
    every counterparty with that legal address; a changed department every staff
    member in it), as :data:`totes.star.BUILDERS` declares them.
    """
    dimensions: dict[str, pd.DataFrame] = {}
    deferred: dict[str, list[int]] = {}
    for name, spec in star.BUILDERS.items():
        if isinstance(spec, star.Dimension) and spec.source in state:
            rows = state[spec.source]
            dimensions[name] = spec.build(
                rows[rows[primary_key(spec.source)].isin(changed[spec.source])])
        elif isinstance(spec, star.JoinedDimension):
            parents = state[spec.parent]
            children, orphans = _children(state[spec.source], spec.source, spec.parent_key,
                                          changed, spec.parent, parents)
            dimensions[name] = spec.build(children, parents)
            if orphans:
                deferred[name] = orphans
    return Propagation(dimensions=dimensions, deferred=deferred)
