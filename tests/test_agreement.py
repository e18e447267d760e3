"""Agreement figures against published worked examples, and read from stored reviews.

The hand-built case is Krippendorff's own example C ("Computing Krippendorff's
Alpha-Reliability", 2011: 4 observers, 12 units, values 1-5, some missing), which Gwet's
Handbook of Inter-Rater Reliability analyses too:

- Krippendorff (2011): alpha nominal 0.743, ordinal 0.815, interval 0.849;
- Gwet (irrCAC for R, ``gwet.ac1.raw(cac.raw4raters)``): AC1 0.7754, percent agreement 0.8182,
  chance agreement 0.1903.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from irrCAC.datasets import raw_4raters

from feedback.agreement import Coefficients, coefficients, unit_matrix
from feedback.database import session_factory
from feedback.review_data import (
    OVERALL,
    agreement_over_time,
    dimension_agreement,
    load_reviews,
    round_half_up,
)
from tests.review_factories import GIVEN_AT, Verdict, add_reviewed_turn

NAN = math.nan
#: Krippendorff (2011), example C: rows are units, columns observers A-D.
EXAMPLE_C = np.array(
    [
        [1, 1, NAN, 1],
        [2, 2, 3, 2],
        [3, 3, 3, 3],
        [3, 3, 3, 3],
        [2, 2, 2, 2],
        [1, 2, 3, 4],
        [4, 4, 4, 4],
        [1, 1, 2, 1],
        [2, 2, 2, 2],
        [NAN, 5, 5, 5],
        [NAN, NAN, 1, 1],
        [NAN, NAN, 3, NAN],
    ]
)


def test_example_c_matches_the_published_figures() -> None:
    ordinal = coefficients("fidelity", EXAMPLE_C)
    assert ordinal.alpha == pytest.approx(0.815, abs=5e-4)
    assert ordinal.ac1 == pytest.approx(0.7754, abs=5e-5)
    assert ordinal.raw == pytest.approx(0.8182, abs=5e-5)
    assert (ordinal.units, ordinal.ratings) == (11, 40)  # the last unit has one value
    nominal = coefficients("fidelity", EXAMPLE_C, level="nominal", categories=[1, 2, 3, 4, 5])
    assert nominal.alpha == pytest.approx(0.743, abs=5e-4)
    assert nominal.ac1 == ordinal.ac1  # AC1 is unweighted either way
    assert nominal.ac2 is None


def test_the_irrcac_bundled_copy_of_example_c_is_the_same() -> None:
    """The data set shipped with irrCAC is example C: our figures are the library's."""
    assert np.array_equal(raw_4raters().to_numpy(), EXAMPLE_C, equal_nan=True)


def test_a_flag_nearly_always_false_collapses_alpha_but_not_ac1() -> None:
    """Why AC1 stands beside alpha: 20 items every reviewer called safe, one called unsafe by
    one reviewer out of three. Agreement is 97 %, alpha says none beyond chance."""
    units = np.array([[0.0, 0.0, 0.0]] * 20 + [[0.0, 0.0, 1.0]])
    flag = coefficients("unsafe", units, level="nominal")
    assert flag.alpha is not None and flag.alpha <= 0.0
    assert flag.ac1 is not None and flag.ac1 > 0.95
    assert flag.raw == pytest.approx(61 / 63)  # agreeing pairs: 20 * 3 + 1 of 21 * 3


def test_undefined_figures_are_none() -> None:
    nothing = coefficients("voice", np.array([[4.0, NAN], [NAN, 3.0]]))
    assert nothing == Coefficients("voice", "ordinal", 0, 0, None, None, None, None)
    same = coefficients("voice", np.array([[4.0, 4.0], [4.0, 4.0]]))
    assert same.alpha is None  # no disagreement is possible by chance either
    assert same.ac1 == 1.0
    assert same.raw == 1.0


def test_one_unit_is_enough() -> None:
    """irrCAC's variance cannot be computed on one unit; the point estimates can."""
    one = coefficients("voice", np.array([[4.0, 4.0, 3.0]]))
    assert one.units == 1 and one.raw == pytest.approx(1 / 3)
    assert one.ac1 == pytest.approx((1 / 3 - (2 / 3 * 1 / 3 + 1 / 3 * 2 / 3) / 4) / (1 - 1 / 9))


def test_unit_matrix_groups_ratings_by_unit() -> None:
    units = np.array([7, 3, 7, 3, 9, 7])
    values = np.array([1.0, 2.0, NAN, 4.0, 5.0, 3.0])
    matrix = unit_matrix(units, values)
    assert matrix.shape == (3, 2)
    np.testing.assert_array_equal(matrix, [[2.0, 4.0], [1.0, 3.0], [5.0, NAN]])
    assert unit_matrix(np.array([], dtype=int), np.array([])).shape == (0, 0)


def test_round_half_up() -> None:
    assert [round_half_up(x) for x in (2.5, 3.5, 3.4, 4.0)] == [3, 4, 3, 4]


async def test_stored_reviews_give_the_published_figures(db_engine, store) -> None:
    """Example C as review items and reviews in the database (each observer an actor, a
    missing value a review not given), read back and agreed on per dimension."""
    sessions = session_factory(db_engine)
    actors = ["discord:a", "discord:b", "discord:c", "discord:d"]
    for index, unit in enumerate(EXAMPLE_C):
        verdicts = [
            Verdict(
                actor,
                {"fidelity": int(value), "voice": 3},
                rating=int(value),
                acceptable=value >= 3,
                at=GIVEN_AT + timedelta(days=index // 6),
            )
            for actor, value in zip(actors, unit, strict=True)
            if not math.isnan(value)
        ]
        await add_reviewed_turn(sessions, store, verdicts, user_id=f"discord:{index}")
    table = await load_reviews(sessions)
    assert len(table) == 41
    assert table.dimensions == ["fidelity", "voice"]
    figures = {figure.name: figure for figure in dimension_agreement(table)}
    assert list(figures) == ["fidelity", "voice", OVERALL, "acceptable", "unsafe"]
    assert figures["fidelity"].alpha == pytest.approx(0.815, abs=5e-4)
    assert figures["fidelity"].ac1 == pytest.approx(0.7754, abs=5e-5)
    assert figures[OVERALL].alpha == figures["fidelity"].alpha
    assert figures["voice"].ac1 == 1.0 and figures["voice"].alpha is None
    assert figures["unsafe"].raw == 1.0
    consensus = table.consensus()
    assert consensus["reviews"].tolist() == [3, 4, 4, 4, 4, 4, 4, 4, 4, 3, 2, 1]
    # unit 6 (1, 2, 3, 4): median 2.5 rounds up to 3; acceptable 2 of 4: a tie, no majority
    assert consensus["fidelity"].iloc[5] == 3.0
    assert math.isnan(consensus["acceptable"].iloc[5])
    assert consensus["agreement"].iloc[5] == 0.5
    freq, series = agreement_over_time(table)
    assert freq == "D" and len(series) == 2
    assert sum(figures[0].units for _, figures in series) == 11


async def test_reviews_of_one_persona(db_engine, store) -> None:
    sessions = session_factory(db_engine)
    await add_reviewed_turn(sessions, store, [Verdict("discord:a", {"fidelity": 4})])
    await add_reviewed_turn(
        sessions, store, [Verdict("discord:a", {"voice": 2})], persona="Juniper"
    )
    table = await load_reviews(sessions, persona="Juniper")
    assert len(table) == 1 and table.dimensions == ["voice"]
