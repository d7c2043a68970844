"""tapeout.compilers.measure: the batches a comparison runs on and the numbers it reports."""

from __future__ import annotations

import numpy as np
import pytest

from tapeout.compilers.diff import compare_runners
from tapeout.compilers.interface import TensorSpec
from tapeout.compilers.measure import SQNR_CAP_DB, LsbHistogram, cosines, padded_batches, sqnr_db, top1_matches


def test_padded_batches_hold_exactly_the_first_count_samples():
    arrays = {"x": np.arange(7, dtype=np.float64).reshape(7, 1)}
    batches = list(padded_batches([arrays], (TensorSpec("x", (3, 1), "float32"),), 5))
    assert [real for _, real in batches] == [3, 2]
    assert [feed["x"].ravel().tolist() for feed, _ in batches] == [[0, 1, 2], [3, 4, 4]]  # sample 5 never read
    assert all(feed["x"].dtype == np.float32 and feed["x"].flags.c_contiguous for feed, _ in batches)


@pytest.mark.parametrize("chunk_rows", [[11], [1] * 11, [2, 3, 1, 5], [4, 4, 3], [7, 4], [3, 3, 3, 2]])
@pytest.mark.parametrize("count", [1, 5, 8, 11])
def test_padded_batches_are_the_same_whatever_the_chunks_the_samples_come_in(chunk_rows, count):
    x = np.arange(22, dtype=np.float32).reshape(11, 2)
    y = -np.arange(11, dtype=np.float64).reshape(11, 1)
    inputs = (TensorSpec("x", (4, 2), "float32"), TensorSpec("y", (4, 1), "float32"))
    starts = np.cumsum([0, *chunk_rows])
    read: list[int] = []

    def chunks():
        for start, stop in zip(starts, starts[1:]):
            read.append(int(start))
            yield {"x": x[start:stop], "y": y[start:stop]}

    whole = list(padded_batches([{"x": x, "y": y}], inputs, count))
    streamed = list(padded_batches(chunks(), inputs, count))
    assert [real for _, real in streamed] == [real for _, real in whole]
    for (got, _), (want, _) in zip(streamed, whole):
        for name in ("x", "y"):
            assert got[name].dtype == np.float32 and got[name].flags.c_contiguous
            np.testing.assert_array_equal(got[name], want[name])
    assert all(start < count for start in read)  # no chunk read after the count-th sample


class _Scaled:
    """A runner computing y = 2x, and from sample `differ_from` on 5 more: the
    samples a comparison must not see when it is asked for fewer."""

    def __init__(self, differ_from: int | None = None) -> None:
        self.differ_from = differ_from

    def run(self, inputs):
        x = inputs["x"].astype(np.float32)
        y = x * 2.0
        if self.differ_from is not None:
            y[x[:, 0] >= self.differ_from] += 5.0  # sample i holds i in its first value
        return {"y": y}


def test_a_comparison_of_n_samples_compares_exactly_n_when_n_is_not_a_whole_number_of_batches():
    arrays = {"x": np.repeat(np.arange(8, dtype=np.float32)[:, None], 4, axis=1)}
    inputs = (TensorSpec("x", (2, 4), "float32"),)
    (output,), _, _, _ = compare_runners(_Scaled(differ_from=3), _Scaled(), [arrays], inputs, 3, {"y": 0.5})
    assert output.elements == 3 * 4  # samples 0..2: sample 3 fills the second batch only as padding
    assert output.buckets["exact"] == 12 and output.max_lsb == 0
    (output,), _, _, _ = compare_runners(_Scaled(differ_from=3), _Scaled(), [arrays], inputs, 4, {"y": 0.5})
    assert output.elements == 16 and output.buckets[">2"] == 4  # sample 3 itself: 5 / 0.5 = 10 LSB


def test_sqnr_is_within_its_cap_and_says_which_way():
    assert sqnr_db(1.0, 0.0) == SQNR_CAP_DB  # exact
    assert sqnr_db(0.0, 1.0) == -SQNR_CAP_DB  # noise without signal
    assert sqnr_db(1.0, 1e-30) == SQNR_CAP_DB
    assert sqnr_db(1e-30, 1.0) == -SQNR_CAP_DB
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)


def test_a_zero_vector_agrees_only_with_itself():
    exact = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    approximate = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    assert cosines(exact, approximate).tolist() == [1.0, 0.0, 0.0, -1.0]


def test_lsb_histogram_counts_every_batch_and_top1_over_every_row():
    counted = LsbHistogram()
    reference = np.array([[0.0, 0.1, 0.2], [0.3, 0.2, 0.1]])
    counted.add(reference, np.array([[0.0, 0.1, 0.3], [0.3, 0.2, 0.4]]), 0.1)
    counted.add(reference[:1], reference[:1], 0.1)
    assert counted.elements == 9 and counted.differing == 2
    assert counted.histogram == {0: 7, 1: 1, 3: 1}
    assert counted.top1_agreement == pytest.approx(2 / 3)  # rows, not the mean of per-batch shares
    assert top1_matches(np.array([0.1, 0.9]), np.array([0.9, 0.1])) is None  # no batch axis: not class scores
