"""How the compiler compares compiled outputs with the original's."""

from __future__ import annotations

import numpy as np

from edgemill.compiler.accuracy import compare, failures


def test_relative_error_is_measured_against_the_largest_reference_value() -> None:
    c = compare("y", np.array([1.0, 2.0, 4.0 + 4e-4], np.float32), np.array([1.0, 2.0, 4.0], np.float32))
    assert abs(c.max_relative_error - 1e-4) < 1e-6


def test_float32_gets_no_rounding_allowance() -> None:
    want = np.array([1.0, 2.0], np.float32)
    got = np.nextafter(want, np.float32(10))
    assert failures([compare("y", got, want)], tolerance=0.0)


def test_half_precision_rounding_is_not_an_accuracy_loss() -> None:
    want = np.array([1.0, 3.0], np.float16)
    got = np.nextafter(want, np.float16(10))  # one unit in the last place
    assert not failures([compare("y", got, want)], tolerance=1e-4)
    assert failures([compare("y", want * np.float16(1.01), want)], tolerance=1e-4)


def test_integer_outputs_must_match_exactly() -> None:
    assert failures([compare("label", np.array([1, 2]), np.array([1, 3]))], tolerance=0.5)
    assert not failures([compare("label", np.array([1, 2]), np.array([1, 2]))], tolerance=0.0)


def test_nan_and_inf_must_be_where_the_original_has_them() -> None:
    want = np.array([np.nan, np.inf, 1.0], np.float32)
    assert not failures([compare("y", want.copy(), want)], tolerance=0.0)
    assert failures([compare("y", np.array([0.0, np.inf, 1.0], np.float32), want)], tolerance=1.0)
    assert failures([compare("y", np.array([np.nan, -np.inf, 1.0], np.float32), want)], tolerance=1.0)


def test_shape_mismatch_fails() -> None:
    assert failures([compare("y", np.zeros((2, 2), np.float32), np.zeros((4,), np.float32))], tolerance=1.0)


def test_the_source_runtimes_spread_widens_the_allowance_of_its_own_output_only() -> None:
    want = np.array([1.0, 2.0, 4.0], np.float32)
    got = want + np.array([0, 0, 8e-4], np.float32)  # 2e-4 of the largest value
    pair = [compare("y", got, want), compare("z", got, want)]
    assert [c.name for c in failures(pair, 1e-4)] == ["y", "z"]
    assert [c.name for c in failures(pair, 1e-4, {"y": 3e-4})] == ["z"]
    assert [c.name for c in failures(pair, 1e-4, {"y": 1.5e-4, "z": 3e-4})] == ["y"]
