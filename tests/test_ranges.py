"""Range and list syntax shared by all commands."""

from __future__ import annotations

import itertools

import pytest

from fobbench.errors import FobbenchError
from fobbench.ranges import parse_range


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("32..512", [32, 64, 128, 256, 512]),
        ("16..256:16", list(range(16, 257, 16))),
        ("1,2,5,10", [1, 2, 5, 10]),
        ("7", [7]),
        ("3..3", [3]),
        ("1..100", [1, 2, 4, 8, 16, 32, 64]),
        ("1..100@3", [1, 10, 100]),
    ],
)
def test_valid_int_ranges(spec: str, expected: list[int]) -> None:
    assert parse_range(spec, "--x") == expected


def test_float_log_grid_is_geometric_and_inclusive() -> None:
    values = parse_range("1e-5..1@6", "--nu", kind=float)
    assert values[0] == pytest.approx(1e-5) and values[-1] == 1.0
    ratios = [b / a for a, b in itertools.pairwise(values)]
    assert ratios == pytest.approx([10.0] * 5)


@pytest.mark.parametrize("spec", ["512..32", "0..8", "a..b", "-4", "0", "1,-2", "", "  ", "1..8:0", "2..8@1",
                                  "x", "32,", "1,,2", ",8"])
def test_invalid_ranges_name_the_option(spec: str) -> None:
    with pytest.raises(FobbenchError) as error:
        parse_range(spec, "--seq")
    message = str(error.value)
    assert message.startswith("--seq")
    assert "\n" not in message


def test_negative_allowed_when_not_a_size() -> None:
    assert parse_range("-1,0,1", "--shift", kind=float, positive=False) == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("spec", ["32,", "1,,2", ",8"])
def test_a_stray_comma_is_an_error_not_a_shorter_list(spec: str) -> None:
    with pytest.raises(FobbenchError, match="empty item"):
        parse_range(spec, "--seq")


@pytest.mark.parametrize("text", ["maml,", "maml,,fomaml"])
def test_a_stray_comma_in_a_method_list_is_an_error(text: str) -> None:
    from fobbench.estimators import parse_methods

    with pytest.raises(FobbenchError, match="^--methods: .*empty item"):
        parse_methods(text, "--methods")
