"""Bit packing: one pack/unpack pair per width, storing unsigned codes densely in uint8 bytes.

Every packer takes a 1-D uint8 tensor of codes (any length) and returns a 1-D uint8 tensor; the
unpacker takes that and the original number of codes. Codes are padded with zeros up to the pack
unit, so the packed size is ceil(n / unit) * bytes_per_unit. All layouts are little-endian in bits:
code i of a unit sits at bit offset i * bits of the unit's little-endian integer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _check_codes(codes: torch.Tensor, bits: int) -> None:
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(f"codes must be a 1-D uint8 tensor, got {codes.dtype} with shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ValueError(f"a code ({int(codes.max())}) does not fit in {bits} bits")


def _padded_units(codes: torch.Tensor, per_unit: int) -> torch.Tensor:
    pad = -codes.numel() % per_unit
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    return codes.view(-1, per_unit)


def pack_1bit_u8(codes: torch.Tensor) -> torch.Tensor:
    """Eight 1-bit codes per byte: byte k = sum_i c[8k+i] << i (i = 0..7)."""
    _check_codes(codes, 1)
    units = _padded_units(codes, 8)
    shifts = torch.arange(8, dtype=torch.uint8)
    return (units << shifts).sum(1, dtype=torch.uint8)


def unpack_1bit_u8(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed[:, None] >> shifts) & 1).reshape(-1)[:numel].contiguous()


def pack_2bit_u8(codes: torch.Tensor) -> torch.Tensor:
    """Four 2-bit codes per byte.

    byte k = c[4k] | c[4k+1] << 2 | c[4k+2] << 4 | c[4k+3] << 6
    """
    _check_codes(codes, 2)
    units = _padded_units(codes, 4)
    return units[:, 0] | (units[:, 1] << 2) | (units[:, 2] << 4) | (units[:, 3] << 6)


def unpack_2bit_u8(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    return ((packed[:, None] >> shifts) & 0b11).reshape(-1)[:numel].contiguous()


def pack_3bit_u8(codes: torch.Tensor) -> torch.Tensor:
    """Eight 3-bit codes per three bytes (exactly 3 bits per code).

    The unit's 24-bit integer v = sum_i c[8k+i] << 3i (i = 0..7) is stored little-endian:
    byte 3k = v & 0xFF, byte 3k+1 = (v >> 8) & 0xFF, byte 3k+2 = v >> 16.

        byte 3k   : c2[1:0] c1[2:0] c0[2:0]      (most significant bit first)
        byte 3k+1 : c5[0] c4[2:0] c3[2:0] c2[2]
        byte 3k+2 : c7[2:0] c6[2:0] c5[2:1]
    """
    _check_codes(codes, 3)
    units = _padded_units(codes, 8).to(torch.int32)
    shifts = torch.arange(0, 24, 3, dtype=torch.int32)
    value = (units << shifts).sum(1, dtype=torch.int32)
    out = torch.stack([value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF], dim=1)
    return out.to(torch.uint8).reshape(-1)


def unpack_3bit_u8(packed: torch.Tensor, numel: int) -> torch.Tensor:
    triples = packed.view(-1, 3).to(torch.int32)
    value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
    shifts = torch.arange(0, 24, 3, dtype=torch.int32)
    codes = (value[:, None] >> shifts) & 0b111
    return codes.to(torch.uint8).reshape(-1)[:numel].contiguous()


def pack_4bit_u8(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: byte k = c[2k] | c[2k+1] << 4 (low nibble first)."""
    _check_codes(codes, 4)
    units = _padded_units(codes, 2)
    return units[:, 0] | (units[:, 1] << 4)


def unpack_4bit_u8(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel].contiguous()


def pack_8bit_u8(codes: torch.Tensor) -> torch.Tensor:
    """One code per byte (a copy, so the result never aliases the input)."""
    _check_codes(codes, 8)
    return codes.clone()


def unpack_8bit_u8(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return packed[:numel].clone()


Packer = Callable[[torch.Tensor], torch.Tensor]
Unpacker = Callable[[torch.Tensor, int], torch.Tensor]

PACKERS: dict[int, tuple[Packer, Unpacker]] = {
    1: (pack_1bit_u8, unpack_1bit_u8),
    2: (pack_2bit_u8, unpack_2bit_u8),
    3: (pack_3bit_u8, unpack_3bit_u8),
    4: (pack_4bit_u8, unpack_4bit_u8),
    8: (pack_8bit_u8, unpack_8bit_u8),
}
# (codes per unit, bytes per unit) for every width.
_UNITS = {1: (8, 1), 2: (4, 1), 3: (8, 3), 4: (2, 1), 8: (1, 1)}


def _packers(bits: int) -> tuple[Packer, Unpacker]:
    if bits not in PACKERS:
        raise ValueError(f"no packing for {bits}-bit codes; supported: {sorted(PACKERS)}")
    return PACKERS[bits]


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes taken by `numel` packed codes of `bits` bits."""
    per_unit, unit_bytes = _UNITS[bits]
    return -(-numel // per_unit) * unit_bytes


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes of any shape (flattened row-major) at `bits` bits."""
    return _packers(bits)[0](codes.reshape(-1).contiguous())


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 codes of `shape`."""
    numel = 1
    for dim in shape:
        numel *= dim
    if packed.dtype != torch.uint8 or packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(
            f"{bits}-bit codes of shape {tuple(shape)} take {packed_nbytes(numel, bits)} uint8 bytes, "
            f"got {packed.numel()} {packed.dtype}"
        )
    return _packers(bits)[1](packed, numel).view(shape)
