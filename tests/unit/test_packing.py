import pytest
import torch

from quantization.packing import PACKERS, pack_codes, packed_nbytes, unpack_codes

SHAPES = [(0,), (1,), (2,), (3,), (7,), (8,), (9,), (10,), (31,), (1000,), (3, 5), (384, 384), (17, 13)]


@pytest.mark.parametrize("bits", sorted(PACKERS))
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_exact(bits: int, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(bits * 1000 + sum(shape))
    codes = torch.randint(0, 2**bits, shape, generator=generator, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(codes.numel(), bits)
    assert torch.equal(unpack_codes(packed, bits, shape), codes)


@pytest.mark.parametrize("bits", sorted(PACKERS))
def test_extreme_codes_round_trip(bits: int) -> None:
    codes = torch.tensor([0, 2**bits - 1] * 13, dtype=torch.uint8)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, (26,)), codes)


@pytest.mark.parametrize(
    ("bits", "numel", "nbytes"), [(1, 8, 1), (1, 9, 2), (2, 9, 3), (3, 8, 3), (3, 9, 6), (4, 5, 3), (8, 5, 5)]
)
def test_packed_size_is_the_true_bit_width(bits: int, numel: int, nbytes: int) -> None:
    assert packed_nbytes(numel, bits) == nbytes


def test_documented_layouts() -> None:
    # 1-bit: bit i of the byte is code i
    assert pack_codes(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1], dtype=torch.uint8), 1).tolist() == [0b10001101]
    # 2-bit: byte = c0 | c1<<2 | c2<<4 | c3<<6
    assert pack_codes(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    # 4-bit: low nibble first
    assert pack_codes(torch.tensor([0xA, 0x5], dtype=torch.uint8), 4).tolist() == [0x5A]
    # 3-bit: 24-bit little-endian integer of eight codes
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0], dtype=torch.uint8)
    value = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    assert pack_codes(codes, 3).tolist() == [value & 0xFF, (value >> 8) & 0xFF, value >> 16]


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_codes_that_do_not_fit_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack_codes(torch.tensor([2**bits], dtype=torch.uint8), bits)


def test_wrong_packed_length_is_refused() -> None:
    with pytest.raises(ValueError, match="take 3 uint8 bytes"):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), 3, (8,))


def test_unsupported_width() -> None:
    with pytest.raises(ValueError, match="no packing for 5-bit"):
        pack_codes(torch.zeros(4, dtype=torch.uint8), 5)
