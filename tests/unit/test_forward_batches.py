import itertools
import random

import pytest

from quantization.evaluate import plan_forward_batches


def cost(lengths: list[int], batches: list[list[int]], overhead: int) -> int:
    return sum(overhead + len(batch) * max(lengths[i] for i in batch) for batch in batches)


def test_every_sequence_runs_once_in_batches_of_similar_length() -> None:
    lengths = [5, 60, 6, 7, 50, 8, 9, 10, 55, 12, 5, 6, 7, 8, 9, 40]
    batches = plan_forward_batches(lengths, max_batch=16, overhead_tokens=32)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= 16 for batch in batches)
    in_order = [lengths[i] for batch in batches for i in batch]
    assert in_order == sorted(lengths), "batches are contiguous runs in order of length"
    assert len(batches) == 2, "the four long sentences run apart from the twelve short ones"


def test_sequences_of_one_length_fill_whole_batches() -> None:
    batches = plan_forward_batches([30] * 40, max_batch=16, overhead_tokens=32)
    assert sorted(len(batch) for batch in batches) == [8, 16, 16]


def test_a_long_outlier_is_split_off_only_when_its_padding_outweighs_a_pass() -> None:
    short_and_long = [5] * 15 + [200]
    assert [len(b) for b in plan_forward_batches(short_and_long, 16, overhead_tokens=32)] == [15, 1]
    nearly_equal = [20] * 15 + [21]
    assert [len(b) for b in plan_forward_batches(nearly_equal, 16, overhead_tokens=32)] == [16]


@pytest.mark.parametrize("seed", range(20))
def test_the_plan_costs_no_more_than_any_other_cut_of_the_sorted_sequences(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 9))]
    max_batch, overhead = rng.randint(1, 5), rng.choice([0, 8, 32, 100])
    planned = plan_forward_batches(lengths, max_batch, overhead)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = min(
        cost(lengths, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], overhead)
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
        if all(b - a <= max_batch for a, b in itertools.pairwise((0, *cuts, len(order))))
    )
    assert all(len(batch) <= max_batch for batch in planned)
    assert cost(lengths, planned, overhead) == best


def test_nothing_to_run_and_bad_limits() -> None:
    assert plan_forward_batches([], max_batch=16) == []
    with pytest.raises(ValueError, match="max_batch"):
        plan_forward_batches([3], max_batch=0)


def test_a_token_budget_caps_each_pass_and_a_longer_sequence_runs_alone() -> None:
    """The pool batches inputs, the planner forward passes: a QA input of several 384-token windows fills passes
    by tokens (TEI's max_batch_tokens), not by a count of inputs."""
    windows = [384] * 20 + [50] * 4
    planned = plan_forward_batches(windows, None, overhead_tokens=32, max_tokens=384 * 8)
    assert sorted(i for batch in planned for i in batch) == list(range(24))
    assert all(len(batch) * max(windows[i] for i in batch) <= 384 * 8 for batch in planned)
    assert [len(b) for b in planned if windows[b[0]] == 384] == [4, 8, 8]  # the fewest passes the budget allows
    assert plan_forward_batches([500, 10], None, max_tokens=100) == [[1], [0]]  # over the budget: alone
    with pytest.raises(ValueError, match="max_tokens"):
        plan_forward_batches([3], None, max_tokens=0)
