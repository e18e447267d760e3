"""Agreement between reviewers, per rubric dimension, from well-kept libraries.

For each dimension (scores 1-5, ordinal) and each verdict flag (``acceptable``, ``unsafe``,
nominal):

- Krippendorff's alpha, from the ``krippendorff`` package (ordinal for scores, nominal for
  flags): chance-corrected, but it collapses towards 0 when nearly every label is the same
  (a flag that is almost always false), however well reviewers agree;
- Gwet's AC1 (and AC2 with ordinal weights, for scores), from ``irrCAC`` (the Python port of
  Gwet's own R package): chance-corrected in a way that does not collapse then, so it stands
  beside alpha;
- raw agreement: the share of agreeing pairs of ratings within a unit (Gwet's ``pa`` with
  identity weights, from ``irrCAC``).

A unit is one review item; its ratings are the reviewers' values, in any order (every
coefficient here depends only on how many reviewers chose each value in each unit, not on
who they were). Units with fewer than two ratings are not pairable: they count for the
chance terms where the method says so, never for observed agreement. A coefficient is
``None`` when it is undefined (no pairable unit; alpha when every value is the same).

``irrCAC`` pins old releases of scipy and pandas (``scripts/setup.sh`` installs it without its
dependencies); it is only called with its ``categories`` given, which is what keeps it right
on the pandas we run (tests check it against Gwet's published figures).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import krippendorff
import numpy as np
import pandas as pd
from irrCAC.raw import CAC

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "FLAG_CATEGORIES",
    "SCORE_CATEGORIES",
    "Coefficients",
    "coefficients",
    "unit_matrix",
]

_log = logging.getLogger(__name__)

#: The values a rubric score can take (the 1-5 scale).
SCORE_CATEGORIES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
#: A yes/no flag as a category: 0 no, 1 yes.
FLAG_CATEGORIES: tuple[float, ...] = (0.0, 1.0)
#: Digits irrCAC rounds its estimates to (its default, 5, would hide differences in tests).
_DIGITS = 12

Level = Literal["ordinal", "nominal"]


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Agreement on one dimension or flag over a set of units."""

    name: str
    #: ``ordinal`` (rubric scores) or ``nominal`` (yes/no flags).
    level: Level
    #: Units with two or more ratings (the pairable ones).
    units: int
    #: Ratings in those units.
    ratings: int
    #: Krippendorff's alpha at :attr:`level`.
    alpha: float | None
    #: Gwet's AC1 (unweighted).
    ac1: float | None
    #: Gwet's AC2 with ordinal weights (``None`` for flags: with two values it is AC1).
    ac2: float | None
    #: Share of agreeing pairs of ratings within units (unweighted percent agreement).
    raw: float | None

    def as_dict(self) -> dict[str, str | int | float | None]:
        """For JSON and the dataset card: figures rounded to 4 places."""
        return {
            "name": self.name,
            "level": self.level,
            "units": self.units,
            "ratings": self.ratings,
            "alpha": _round(self.alpha),
            "ac1": _round(self.ac1),
            "ac2": _round(self.ac2),
            "raw_agreement": _round(self.raw),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def unit_matrix(unit_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Ratings as a ``units x slots`` float matrix, ``NaN`` where a unit has fewer ratings.

    ``unit_ids[i]`` is the unit of ``values[i]`` (any order; ``NaN`` values are dropped).
    Units keep the order of their first id when sorted; slot ``j`` is a unit's ``j``-th rating.
    """
    keep = ~np.isnan(values)
    unit_ids, values = unit_ids[keep], values[keep]
    if unit_ids.size == 0:
        return np.empty((0, 0))
    order = np.argsort(unit_ids, kind="stable")
    sorted_ids, sorted_values = unit_ids[order], values[order]
    _, starts, counts = np.unique(sorted_ids, return_index=True, return_counts=True)
    rows = np.repeat(np.arange(starts.size), counts)
    slots = np.arange(sorted_ids.size) - np.repeat(starts, counts)
    matrix = np.full((starts.size, int(counts.max())), np.nan)
    matrix[rows, slots] = sorted_values
    return matrix


def coefficients(
    name: str,
    matrix: np.ndarray,
    *,
    level: Level = "ordinal",
    categories: Sequence[float] | None = None,
) -> Coefficients:
    """Alpha, AC1, AC2 and raw agreement of ``matrix`` (see :func:`unit_matrix`).

    ``categories`` are every value a rating can take (default: the 1-5 scale for ``ordinal``,
    0/1 for ``nominal``); they must be given in full, or the chance terms are wrong (and
    irrCAC on pandas 3 would count ``NaN`` as a category).
    """
    if categories is None:
        categories = SCORE_CATEGORIES if level == "ordinal" else FLAG_CATEGORIES
    domain = [float(value) for value in categories]
    counts = np.stack([(matrix == value).sum(axis=1) for value in domain], axis=1)
    per_unit = counts.sum(axis=1)
    pairable = per_unit >= 2
    units, ratings = int(pairable.sum()), int(per_unit[pairable].sum())
    if units == 0:
        return Coefficients(name, level, 0, 0, None, None, None, None)
    rated = matrix[per_unit > 0]
    if len(rated) == 1:
        # irrCAC's variance divides by n (n - 1) in plain Python. Gwet's pa and pe are means
        # over units, so the same unit twice gives the same point estimates.
        rated = np.vstack([rated, rated])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # The libraries' variance and confidence terms divide by zero on one or two units;
        # only the point estimates are used here.
        warnings.simplefilter("ignore", RuntimeWarning)
        alpha = krippendorff.alpha(
            value_counts=counts[pairable], level_of_measurement=level, value_domain=domain
        )
        frame = pd.DataFrame(rated)
        unweighted = CAC(frame, weights="identity", categories=domain, digits=_DIGITS).gwet()
        ac2 = None
        if level == "ordinal":
            weighted = CAC(frame, weights="ordinal", categories=domain, digits=_DIGITS).gwet()
            ac2 = _finite(weighted["est"]["coefficient_value"])
    return Coefficients(
        name=name,
        level=level,
        units=units,
        ratings=ratings,
        alpha=_finite(alpha),
        ac1=_finite(unweighted["est"]["coefficient_value"]),
        ac2=ac2,
        raw=_finite(unweighted["est"]["pa"]),
    )


def _finite(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
