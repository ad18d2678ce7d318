"""lookup_rows against a Python dictionary at the batch sizes and scene extents the configs run, and at
MinkowskiEngine's int32 limits."""
import MinkowskiEngine as ME
import numpy as np
import pytest
import torch

from lang3d.geometry.sparse_index import coarsen, lookup_rows

INT32 = np.iinfo(np.int32)


def dict_lookup(table: torch.Tensor, query: torch.Tensor) -> list[int]:
    index = {tuple(r): i for i, r in enumerate(table.tolist())}
    return [index.get(tuple(r), -1) for r in query.tolist()]


def room_batch(n_samples: int, voxels_per_sample: int, extent: int, seed: int) -> torch.Tensor:
    """[ΣV, 4] int32 batched voxel coordinates, every sample a room of ``extent`` voxels a side placed at the
    same origin (the usual case: each frame / scene in its own world or centred coordinates)."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_samples):
        xyz = np.unique(rng.integers(0, extent, (voxels_per_sample, 3)), axis=0)
        rows.append(np.concatenate([np.full((len(xyz), 1), b), xyz], 1))
    return torch.as_tensor(np.concatenate(rows), dtype=torch.int32)


def test_batch_positions_up_to_40_do_not_collide():
    """The same voxel in 40 batch positions: each query finds its own sample's row (batch b and b + 16 used to
    share a key)."""
    xyz = torch.tensor([[3, -7, 11], [400, 0, 120]], dtype=torch.int32)
    table = torch.cat([torch.cat([torch.full((2, 1), b, dtype=torch.int32), xyz], 1) for b in range(40)])
    shuffled = table[torch.randperm(len(table), generator=torch.Generator().manual_seed(0))]
    rows = lookup_rows(shuffled, table)
    assert torch.equal(shuffled[rows], table)


def test_stride16_parents_of_a_batch_of_40_scannet_rooms_against_minkowski():
    """40 rooms of 10 m at 2.5 cm (400 voxels a side), the encoder's stride-16 cells from MinkowskiEngine: every
    voxel finds the parent in its own sample, and the lookup equals a dictionary's."""
    coords = room_batch(40, 1500, 400, seed=1)
    x = ME.SparseTensor(torch.ones(len(coords), 1), coordinates=coords)
    conv = ME.MinkowskiConvolution(1, 1, kernel_size=2, stride=2, dimension=3)
    y = x
    for _ in range(4):
        y = conv(y)
    parents = coarsen(x.C, 16)
    rows = lookup_rows(y.C, parents)
    assert rows.tolist() == dict_lookup(y.C, parents)
    assert (rows >= 0).all()
    assert torch.equal(y.C[rows], parents)
    assert set(y.C[:, 0].tolist()) == set(range(40))


@pytest.mark.parametrize("n_samples, extent", [(1024, 2000), (2048, 16000)])
def test_large_batches_and_building_sized_scenes(n_samples, extent):
    """1,024 and 2,048 samples; scenes 50 m (5 cm voxels) and 400 m (2.5 cm voxels) a side, centred on 0. Every
    sample holds 40 voxels of one shared pool of 200, so each voxel recurs in many batch positions; queries
    hit, and miss (voxels of the pool the sample does not hold)."""
    rng = np.random.default_rng(n_samples)
    pool = rng.integers(-(extent // 2), extent // 2, (200, 3))
    pool[:2] = [[-(extent // 2)] * 3, [extent // 2 - 1] * 3]
    pool = np.unique(pool, axis=0)
    table, misses = [], []
    for b in range(n_samples):
        held = rng.permutation(len(pool))
        table.append(np.concatenate([np.full((40, 1), b), pool[held[:40]]], 1))
        misses.append(np.concatenate([np.full((2, 1), b), pool[held[40:42]]], 1))
    table = torch.as_tensor(np.concatenate(table), dtype=torch.int32)
    hits = table[torch.as_tensor(rng.permutation(len(table)))]
    query = torch.cat([hits, torch.as_tensor(np.concatenate(misses), dtype=torch.int32)])
    rows = lookup_rows(table, query)
    assert rows.tolist() == dict_lookup(table, query)
    assert torch.equal(table[rows[:len(hits)]], hits) and (rows[len(hits):] == -1).all()


def test_coordinates_at_the_int32_limits():
    """Coordinates spanning MinkowskiEngine's whole int32 range (no packing fits 63 bits) and batch indices near
    2^31: still exact."""
    rng = np.random.default_rng(7)
    table = np.concatenate([rng.integers(0, INT32.max, (300, 1), endpoint=True),
                            rng.integers(INT32.min, INT32.max, (300, 3), endpoint=True)], 1)
    table[:4] = [[INT32.max, INT32.max, INT32.min, 0], [0, INT32.min, INT32.min, INT32.min],
                 [INT32.max, INT32.max, INT32.max, INT32.max], [0, INT32.min, INT32.min, INT32.min + 1]]
    table = torch.as_tensor(np.unique(table, axis=0), dtype=torch.int32)
    near_miss = table[:50].clone()
    near_miss[:, 3] ^= 1  # flip the lowest bit of z
    query = torch.cat([table[torch.as_tensor(rng.permutation(len(table)))], near_miss])
    assert lookup_rows(table, query).tolist() == dict_lookup(table, query)
    assert lookup_rows(table.long(), query.long()).tolist() == dict_lookup(table, query)


def test_packing_at_exactly_63_bits():
    """Extents 2 · 2^21 · 2^20 · 2^21 = 2^63 (the largest packed range), at both ends of int32: the largest key
    is 2^63 - 1 and every row is still found exactly."""
    rng = np.random.default_rng(8)
    low = np.array([0, INT32.max - 2**21 + 1, INT32.min, -(2**20)])
    extent = np.array([2, 2**21, 2**20, 2**21])
    corners = low + (extent - 1) * np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    table = np.concatenate([corners, low + rng.integers(0, extent, (500, 4))])
    table = torch.as_tensor(np.unique(table, axis=0), dtype=torch.int32)
    near_miss = table.clone()
    near_miss[:, 0] = 1 - near_miss[:, 0]
    query = torch.cat([table[torch.as_tensor(rng.permutation(len(table)))], near_miss])
    assert lookup_rows(table, query).tolist() == dict_lookup(table, query)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_inputs_are_left_unchanged_and_a_table_finds_itself(dtype):
    """No integer dtype's coordinates are shifted in place (int64's ``.long()`` is the tensor itself), in the packed
    keys' path and in the lexicographic path (rows spread over more than 2^63 cells, int64 only)."""
    c = torch.tensor([[0, 3, 4, 5], [1, 7, 8, 9]], dtype=dtype)
    before = c.clone()
    assert lookup_rows(c, c).tolist() == [0, 1]
    assert torch.equal(c, before)
    query = torch.tensor([[1, 7, 8, 9], [0, 3, 4, 6], [0, 3, 4, 5]], dtype=dtype)
    query_before = query.clone()
    assert lookup_rows(c, query).tolist() == [1, -1, 0]
    assert torch.equal(c, before) and torch.equal(query, query_before)
    if dtype == torch.int64:
        wide = torch.tensor([[0, -2 ** 40, 5, 2 ** 40], [1, 2 ** 40, -5, -2 ** 40], [0, 0, 0, 0]])
        wide_before = wide.clone()
        assert lookup_rows(wide, wide.flip(0)).tolist() == [2, 1, 0]
        assert torch.equal(wide, wide_before)


def test_empty_inputs_and_wrong_types():
    table = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    empty = torch.zeros((0, 4), dtype=torch.int32)
    assert lookup_rows(empty, table).tolist() == [-1]
    assert lookup_rows(table, empty).tolist() == []
    assert lookup_rows(empty, empty).tolist() == []
    with pytest.raises(TypeError, match="query coordinates must be an integer tensor"):
        lookup_rows(table, table.float())
    with pytest.raises(ValueError, match=r"table coordinates must be \[N, 4\]"):
        lookup_rows(table[:, 1:], table)
