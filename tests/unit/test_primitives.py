import pytest
import torch

from quantization.config import Granularity, RangeMethod, WeightQuantConfig
from quantization.primitives import group_offsets, rows_of_groups, sqnr_db
from quantization.qtensor import QuantizedWeight


def _heads_of_groups(offsets: torch.Tensor, head_rows: int) -> list[set[int]]:
    return [
        set(range(int(a), int(b))) and {r // head_rows for r in range(int(a), int(b))}
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]


@pytest.mark.parametrize(
    ("rows", "groups", "head_rows"),
    [(384, 128, 32), (768, 128, 64), (48, 12, 12), (384, 12, 32), (384, 5, 32), (384, 384, 32), (64, 7, 16)],
)
def test_groups_never_straddle_heads(rows: int, groups: int, head_rows: int) -> None:
    offsets = group_offsets(rows, groups, head_rows)
    assert len(offsets) == groups + 1
    assert offsets[0] == 0
    assert offsets[-1] == rows
    sizes = offsets[1:] - offsets[:-1]
    assert bool((sizes > 0).all())
    if groups >= rows // head_rows:
        assert all(len(h) == 1 for h in _heads_of_groups(offsets, head_rows))
    else:
        # Fewer groups than heads: each group is a run of whole heads.
        assert all(int(a) % head_rows == 0 for a in offsets)


def test_minilm_attention_groups_are_two_to_four_rows() -> None:
    sizes = group_offsets(384, 128, 32).diff()
    assert set(sizes.tolist()) <= {2, 3, 4}
    assert int(sizes.sum()) == 384


def test_plain_groups_split_evenly() -> None:
    assert group_offsets(1536, 128).diff().tolist() == [12] * 128
    assert group_offsets(10, 3).diff().tolist() == [4, 3, 3]
    assert rows_of_groups(group_offsets(5, 2)).tolist() == [0, 0, 0, 1, 1]


def _weight(rows: int = 96, cols: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=generator) * 0.05
    w[::7] *= 6.0  # rows of very different ranges, as in real attention matrices
    w[3, 5] = 1.5  # an outlier
    return w


@pytest.mark.parametrize(
    ("bits", "symmetric"), [(2, False), (3, False), (4, False), (8, False), (3, True), (4, True), (8, True)]
)
def test_codes_in_range_and_error_within_half_a_step(bits: int, symmetric: bool) -> None:
    w = _weight()
    q = QuantizedWeight.from_float(w, WeightQuantConfig(bits=bits, num_groups=16, symmetric=symmetric))
    assert q.codes.dtype == torch.uint8
    assert int(q.codes.max()) < 2**bits
    err = (w - q.dequantize()).abs()
    assert bool((err <= q.row_scale()[:, None] / 2 + 1e-6).all())  # min/max ranges never clip


def test_symmetric_zero_point_is_mid_code() -> None:
    q = QuantizedWeight.from_float(_weight(), WeightQuantConfig(bits=4, symmetric=True, num_groups=8))
    assert q.zero_point.tolist() == [8] * 8


def test_zero_is_exact_in_asymmetric_ranges() -> None:
    w = _weight()
    w[:, 0] = 0.0
    q = QuantizedWeight.from_float(w, WeightQuantConfig(bits=2, num_groups=32))
    assert bool((q.dequantize()[:, 0] == 0).all())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_range_is_never_worse_than_minmax(bits: int) -> None:
    w = _weight()
    errors = {}
    for method in RangeMethod:
        q = QuantizedWeight.from_float(w, WeightQuantConfig(bits=bits, num_groups=12, range_method=method))
        errors[method] = float((w - q.dequantize()).pow(2).sum())
    assert errors[RangeMethod.MSE] <= errors[RangeMethod.MINMAX]
    assert errors[RangeMethod.MSE] < 0.9 * errors[RangeMethod.MINMAX]  # the outlier makes clipping pay


def test_more_bits_and_more_groups_give_higher_sqnr() -> None:
    w = _weight()

    def sqnr(bits: int, granularity: Granularity, groups: int = 1) -> float:
        config = WeightQuantConfig(bits=bits, granularity=granularity, num_groups=groups)
        return sqnr_db(w, QuantizedWeight.from_float(w, config).dequantize())

    assert sqnr(2, Granularity.GROUPWISE, 32) < sqnr(3, Granularity.GROUPWISE, 32) < sqnr(4, Granularity.GROUPWISE, 32)
    assert sqnr(4, Granularity.PER_TENSOR) < sqnr(4, Granularity.GROUPWISE, 12) < sqnr(4, Granularity.PER_CHANNEL)
    assert sqnr(8, Granularity.PER_CHANNEL) > 40


def test_granularities_give_the_expected_group_counts() -> None:
    w = _weight(rows=40)
    counts = {
        g: QuantizedWeight.from_float(w, WeightQuantConfig(bits=4, granularity=g, num_groups=8)).scale.numel()
        for g in Granularity
    }
    assert counts == {Granularity.PER_TENSOR: 1, Granularity.PER_CHANNEL: 40, Granularity.GROUPWISE: 8}


def test_storage_round_trip_is_exact() -> None:
    w = _weight()
    q = QuantizedWeight.from_float(w, WeightQuantConfig(bits=3, num_groups=10, range_method="mse"), head_rows=24)
    stored = q.to_storage("m.weight")
    back = QuantizedWeight.from_storage(stored, "m.weight", q.shape, 3, group_offsets(96, 10, 24))
    assert torch.equal(back.codes, q.codes)
    assert torch.equal(back.dequantize(), q.dequantize())
    # Packed codes are 3 bits each; scales are float32, zero points uint8.
    assert stored["m.weight.qdata"].numel() == 96 * 64 * 3 // 8
    assert q.packed_nbytes() == 96 * 64 * 3 // 8 + 10 * 5
