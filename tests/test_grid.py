from fractions import Fraction

import numpy as np
import pytest

from napari_zup import grid


@pytest.mark.parametrize("z,f,n", [(2, 2, 3), (5, 4, 17), (63, 4, 249), (10, 2.5, 23), (4, 2.7, 9)])
def test_output_length_follows_protocol(z, f, n):
    assert grid.output_length(z, f) == n
    assert len(grid.output_positions(z, f)) == n


def test_knots_and_restored_partition_the_output():
    knots = grid.knot_output_indices(10, 4)
    restored = grid.restored_output_indices(10, 4)
    assert list(knots) == list(range(0, 37, 4))
    assert sorted(np.concatenate([knots, restored]).tolist()) == list(range(37))


def test_fractional_factor_knots_are_exact():
    # F = 2.5: z = i / 2.5 is an integer for i = 0, 5, 10, ...
    assert list(grid.knot_output_indices(7, 2.5)) == [0, 5, 10, 15]
    assert grid.output_positions(7, 2.5)[3] == Fraction(6, 5)


def test_intervals_cover_every_output_once():
    groups = grid.intervals(6, Fraction(5, 2))
    seen = [i for _, items in groups for i, _ in items]
    assert seen == list(range(grid.output_length(6, 2.5)))
    assert [k for k, _ in groups] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [1, 0.5, -2, float("nan"), float("inf"), "abc", None, "1"])
def test_bad_factors_are_refused_with_a_message(bad):
    with pytest.raises(ValueError, match="factor"):
        grid.parse_factor(bad)


@pytest.mark.parametrize("n, factor", [(2, 2), (5, 4), (7, Fraction(5, 2)), (10, "2.7"),
                                       (3, Fraction(7, 3)), (33, 4), (6, 12.5), (4, 1.5)])
def test_interval_indices_match_exact_positions(n, factor):
    f = grid.parse_factor(factor)
    expected: dict[int, list[int]] = {}
    for i in range(grid.output_length(n, f)):  # written out with exact Fractions
        expected.setdefault(min(int(Fraction(i) / f), n - 2), []).append(i)
    got = [a.tolist() for a in grid.interval_indices(n, factor)]
    assert got == [expected[k] for k in sorted(expected)]
    assert [k for k, _ in grid.intervals(n, factor)] == sorted(expected)


def test_interval_indices_plan_a_huge_output_quickly():
    groups = grid.interval_indices(30000, 4)  # ~120 000 output slices (time: benchmarks)
    assert len(groups) == 29999
    assert groups[0].tolist() == [0, 1, 2, 3] and groups[-1].tolist() == [119992, 119993,
                                                                        119994, 119995, 119996]
