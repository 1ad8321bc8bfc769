"""Register decoding and read planning: the part of every meter driver that is pure data."""

from __future__ import annotations

import math

import pytest
from halsim import f32, s16, s32, u32, u64

from hal.drivers.meters import ABB_B2X, SDM120, SDM630
from hal.drivers.registers import (
    DataType,
    MeterMap,
    ReadBlock,
    RegisterSpec,
    decode,
    extract,
    plan_reads,
)


@pytest.mark.parametrize(
    ("regs", "dtype", "order", "expected"),
    [
        (f32(230.5), DataType.FLOAT32, "big", 230.5),
        (f32(230.5, little=True), DataType.FLOAT32, "little", 230.5),
        (u32(70000), DataType.UINT32, "big", 70000),
        (s32(-70000), DataType.INT32, "big", -70000),
        (u64(2**40 + 5), DataType.UINT64, "big", 2**40 + 5),
        ([s16(-5)], DataType.INT16, "big", -5),
        ([0xFFFF], DataType.UINT16, "big", 65535),
    ],
)
def test_decode(regs, dtype, order, expected):
    assert decode(regs, dtype, order) == pytest.approx(expected)


def test_word_order_matters():
    # the same registers read with the wrong word order give a different number
    assert decode(f32(230.5), DataType.FLOAT32, "little") != pytest.approx(230.5)


def test_decode_needs_enough_registers():
    with pytest.raises(ValueError):
        decode([1], DataType.UINT32)


def test_plan_merges_adjacent_and_splits_on_gap_and_function():
    specs = [RegisterSpec(0, 4), RegisterSpec(2, 4), RegisterSpec(10, 4),
             RegisterSpec(0, 3, DataType.UINT16)]
    assert plan_reads(specs, max_gap=0) == [ReadBlock(3, 0, 1), ReadBlock(4, 0, 4),
                                            ReadBlock(4, 10, 2)]
    assert plan_reads(specs, max_gap=6) == [ReadBlock(3, 0, 1), ReadBlock(4, 0, 12)]


def test_plan_respects_max_count():
    specs = [RegisterSpec(a, 4) for a in range(0, 20, 2)]
    blocks = plan_reads(specs, max_gap=0, max_count=8)
    assert [b.count for b in blocks] == [8, 8, 4]
    assert all(any(b.covers(s) for b in blocks) for s in specs)


def test_builtin_maps_read_in_few_requests():
    # bulk reads are the point of the maps: the SDM630 in one request, the ABB in two
    assert SDM630.blocks == (ReadBlock(4, 0, 0x4C),)
    assert len(SDM120.blocks) == 2
    assert [(b.address, b.count) for b in ABB_B2X.blocks] == [(0x5000, 8), (0x5B00, 0x3B)]


def test_extract_scales_and_maps_nan_to_none():
    block = ReadBlock(4, 0, 4)
    data = {block: f32(1.5) + f32(math.nan)}
    assert extract(RegisterSpec(0, 4, scale=1000), data) == 1500.0
    assert extract(RegisterSpec(2, 4), data) is None
    with pytest.raises(KeyError):
        extract(RegisterSpec(8, 4), data)


def test_map_requires_energy():
    with pytest.raises(ValueError, match="energy_import_wh"):
        MeterMap("x", {"power_w": (RegisterSpec(0),)})
