"""Batch collation with offsets, and sparse coordinate lookups against Python dictionaries / ME itself."""
import MinkowskiEngine as ME
import numpy as np
import torch

from lang3d.data.collate import collate_point_samples
from lang3d.geometry.sparse_index import coarsen, lookup_rows


def sample(n_vox, n_pairs, seed):
    rng = np.random.default_rng(seed)
    return {"coord": rng.integers(-5, 5, (n_vox, 3)).astype(np.int32),
            "color": rng.random((n_vox, 3)).astype(np.float32),
            "image": np.zeros((4, 6, 3), np.uint8), "depth": np.zeros((4, 6), np.float32),
            "pairs": np.stack([rng.integers(0, n_vox, n_pairs), rng.integers(0, 4, n_pairs),
                               rng.integers(0, 6, n_pairs)], 1),
            "name": f"s{seed}"}


def test_collate_offsets_and_pairs_point_to_the_right_voxels():
    samples = [sample(7, 5, 0), {"name": "bad", "skipped": "invalid_pose"}, sample(4, 3, 1), sample(9, 2, 2)]
    batch = collate_point_samples(samples)
    assert batch["skipped"] == {"invalid_pose": 1}
    assert batch["names"] == ["s0", "s1", "s2"]
    assert batch["offset"].tolist() == [7, 11, 20]
    assert batch["coord"].shape == (20, 4) and batch["image"].shape == (3, 4, 6, 3)
    kept = [samples[0], samples[2], samples[3]]
    for b, v, r, c in batch["pairs"].tolist():
        s = kept[b]
        local = v - (0 if b == 0 else batch["offset"][b - 1].item())
        assert batch["coord"][v, 0] == b
        assert batch["coord"][v, 1:].tolist() == s["coord"][local].tolist()
        assert [local, r, c] in s["pairs"].tolist()


def test_collate_of_only_skipped_samples_is_empty():
    batch = collate_point_samples([{"skipped": "too_few_pairs"}])
    assert len(batch["pairs"]) == 0 and batch["coord"].shape == (0, 4)


def test_lookup_rows_against_dict():
    rng = np.random.default_rng(3)
    table = torch.as_tensor(np.unique(rng.integers(-300, 300, (500, 4)), axis=0))
    table[:, 0] = table[:, 0].abs() % 3
    table = torch.unique(table, dim=0)
    query = torch.cat([table[rng.permutation(len(table))[:50]], torch.tensor([[0, 999, 999, 999]])])
    index = {tuple(r): i for i, r in enumerate(table.tolist())}
    expected = [index.get(tuple(r), -1) for r in query.tolist()]
    assert lookup_rows(table, query).tolist() == expected


def test_coarsen_matches_minkowski_strided_coordinates():
    rng = np.random.default_rng(4)
    coords = torch.as_tensor(np.unique(rng.integers(-40, 40, (400, 3)), axis=0)).int()
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    x = ME.SparseTensor(torch.ones(len(coords), 1), coordinates=coords)
    conv = ME.MinkowskiConvolution(1, 1, kernel_size=2, stride=2, dimension=3)
    y = x
    for _ in range(4):
        y = conv(y)
    assert y.tensor_stride == [16, 16, 16]
    rows = lookup_rows(y.C, coarsen(coords, 16))
    assert (rows >= 0).all()
    assert len(torch.unique(rows)) == len(y.C)  # every coarse voxel has a fine voxel


def test_overlay_points_marks_exactly_the_given_pixels():
    from lang3d.visual.tensorboard import colormap, overlay_points

    image = np.full((4, 5, 3), 90, np.uint8)
    out = overlay_points(image, np.array([0, 3]), np.array([1, 4]), np.array([1.0, 2.0]))
    assert out.shape == (4, 10, 3)
    np.testing.assert_array_equal(out[:, :5], image)
    np.testing.assert_array_equal(out[[0, 3], [6, 9]], colormap(np.array([1.0, 2.0])))
    assert (out[1, 5:] == 30).all()
    assert colormap(np.array([0.0, 1.0])).tolist() != colormap(np.array([1.0, 0.0])).tolist()


def test_benchmark_figures_are_recorded_only_when_asked(tmp_path, monkeypatch):
    import json

    from lang3d.training.timing import RECORD_ENV, record, timed

    monkeypatch.delenv(RECORD_ENV, raising=False)
    record("s", "f", 1.0, "u")  # no file named: nothing written anywhere
    path = tmp_path / "figures.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(path))
    record("bench", "speed", 2.5, "items/s")
    record("bench", "time", 0.5, "s")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"script": "bench", "figure": "speed", "value": 2.5, "unit": "items/s"},
                    {"script": "bench", "figure": "time", "value": 0.5, "unit": "s"}]
    assert timed(lambda: sum(range(1000))) >= 0.0
