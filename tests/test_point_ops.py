"""Point ops (FPS, kNN, gathering, unit-sphere normalisation) against slow obvious references, plus the point
selector and the object-sample collate."""
import math

import numpy as np
import pytest
import torch

from lang3d.data.object_samples import PointCountError, PointSelector, check_cloud, collate_object_samples
from lang3d.data.point_ops import (ball_query, farthest_point_sample, farthest_point_sample_np, index_points, knn,
                                   normalize_unit_sphere)


def fps_reference(points, m, start):
    """Textbook FPS with Python loops: next = the point whose distance to the chosen set is largest (first wins)."""
    chosen = [start]
    while len(chosen) < m:
        best, best_d = None, -1.0
        for j, p in enumerate(points):
            d = min(sum((p[a] - points[c][a]) ** 2 for a in range(3)) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


def test_fps_matches_the_loop_reference_for_each_start():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(3, 120, 3, generator=g)
    starts = torch.tensor([0, 17, 119])
    idx = farthest_point_sample(xyz, 24, start=starts)
    assert idx.shape == (3, 24) and idx.dtype == torch.int64
    for b in range(3):
        ref = fps_reference(xyz[b].tolist(), 24, int(starts[b]))
        assert idx[b].tolist() == ref
        assert farthest_point_sample_np(xyz[b].numpy(), 24, start=int(starts[b])).tolist() == ref


def test_fps_ties_go_to_the_lowest_index_in_both_implementations():
    line = torch.zeros(1, 10, 3)
    line[0, :, 0] = torch.arange(10.0)  # from 0 the farthest is 9; then 4 and 5 tie at distance 4
    ref = fps_reference(line[0].tolist(), 5, 0)
    assert ref[:3] == [0, 9, 4]
    assert farthest_point_sample(line, 5)[0].tolist() == ref
    assert farthest_point_sample_np(line[0].numpy(), 5).tolist() == ref


def test_fps_prefix_property_and_distinct_points():
    xyz = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(1))
    long, short = farthest_point_sample(xyz, 100), farthest_point_sample(xyz, 30)
    assert torch.equal(long[:, :30], short)
    assert all(len(set(row.tolist())) == 100 for row in long)
    with pytest.raises(ValueError, match="cannot take 301 of 300"):
        farthest_point_sample(xyz, 301)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fps_and_knn_on_cuda_match_cpu():
    xyz = torch.rand(4, 2048, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(farthest_point_sample(xyz.cuda(), 256).cpu(), farthest_point_sample(xyz, 256))
    centres = index_points(xyz, farthest_point_sample(xyz, 64))
    assert torch.equal(knn(centres.cuda(), xyz.cuda(), 16).cpu(), knn(centres, xyz, 16))


def test_knn_matches_a_brute_force_distance_sort():
    g = torch.Generator().manual_seed(3)
    points, query = torch.rand(2, 90, 3, generator=g), torch.rand(2, 15, 3, generator=g)
    idx = knn(query, points, 7)
    assert idx.shape == (2, 15, 7) and idx.dtype == torch.int64
    for b in range(2):
        for i in range(15):
            q = query[b, i].tolist()
            dist = [math.dist(q, p) for p in points[b].tolist()]
            assert idx[b, i].tolist() == sorted(range(90), key=lambda j: dist[j])[:7]


def test_knn_of_points_in_their_own_cloud_starts_with_themselves():
    points = torch.rand(1, 50, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(knn(points, points, 3)[0, :, 0], torch.arange(50))


def test_index_points_gathers_per_batch():
    points = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)
    idx = torch.tensor([[[0, 4], [2, 2]], [[1, 3], [4, 0]]])
    out = index_points(points, idx)
    assert out.shape == (2, 2, 2, 4)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(out[b, i, j], points[b, idx[b, i, j]])


def test_normalize_unit_sphere_properties_numpy_and_torch():
    rng = np.random.default_rng(5)
    clouds = rng.normal(size=(3, 200, 3)) * [[[2.0, 0.5, 1.0]]] + rng.normal(size=(3, 1, 3)) * 10
    out = normalize_unit_sphere(clouds)
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1).max(1), 1.0, rtol=1e-12)
    moved = normalize_unit_sphere(3.7 * clouds[0] + np.array([1.0, -2.0, 5.0]))  # similarity invariance
    np.testing.assert_allclose(moved, out[0], atol=1e-12)
    torch_out = normalize_unit_sphere(torch.from_numpy(clouds))
    np.testing.assert_allclose(torch_out.numpy(), out, atol=1e-12)
    assert np.array_equal(normalize_unit_sphere(np.ones((4, 3), np.float32)), np.zeros((4, 3), np.float32))
    assert normalize_unit_sphere(clouds.astype(np.float32)).dtype == np.float32


def test_point_selector_counts_errors_and_cache(tmp_path):
    xyz = np.random.default_rng(6).random((500, 3)).astype(np.float32)
    assert PointSelector(500)(xyz, "a", "src").tolist() == list(range(500))
    with pytest.raises(PointCountError, match=r"cloud\.txt: has 500 points, fewer than the 600"):
        PointSelector(600)(xyz, "a", "cloud.txt")
    assert PointSelector(1200, allow_repeat=True)(xyz, "a", "src").tolist() == (list(range(500)) * 3)[:1200]
    selector = PointSelector(64, cache_dir=tmp_path)
    idx = selector(xyz, "shape_0001", "src")
    assert idx.tolist() == farthest_point_sample_np(xyz, 64).tolist()
    path = tmp_path / "shape_0001.npy"
    assert path.is_file() and selector.is_cached("shape_0001", 500)
    np.save(path, np.arange(64)[::-1].astype(np.uint16))  # a (fake) cached entry is what is served
    assert selector(xyz, "shape_0001", "src").tolist() == list(range(63, -1, -1))
    np.save(path, np.arange(10))  # wrong length: recomputed and rewritten
    assert selector(xyz, "shape_0001", "src").tolist() == idx.tolist()
    assert np.load(path).tolist() == idx.tolist()
    with pytest.raises(ValueError, match="not a plain file name"):
        selector(xyz, "../x", "src")


def test_check_cloud_reasons():
    assert check_cloud(np.zeros((0, 3))) == "empty_cloud"
    assert check_cloud(np.array([[0.0, np.nan, 1.0]])) == "nonfinite_cloud"
    assert check_cloud(np.zeros((2, 3))) is None


def test_collate_object_samples_stacks_lists_and_counts_skips():
    samples = [{"points": np.zeros((4, 3), np.float64), "label": np.int64(3), "name": "a",
                "image": np.full((2, 2, 3), 7, np.uint8), "skip_counts": {"blank_view": 2}},
               {"name": "b", "skipped": "empty_cloud"},
               {"points": np.ones((4, 3), np.float32), "label": np.int64(5), "name": "c",
                "image": np.zeros((2, 2, 3), np.uint8)}]
    batch = collate_object_samples(samples)
    assert batch["points"].shape == (2, 4, 3) and batch["points"].dtype == torch.float32
    assert batch["label"].tolist() == [3, 5] and batch["label"].dtype == torch.int64
    assert batch["image"].dtype == torch.uint8 and batch["image"][0, 0, 0, 0] == 7
    assert batch["name"] == ["a", "c"]
    assert batch["skipped"] == {"empty_cloud": 1, "blank_view": 2}
    assert collate_object_samples(samples[1:2]) == {"skipped": {"empty_cloud": 1}}


def ball_query_reference(query, points, radius, num_samples):
    """pointnet2's kernel as a Python loop: scan the points in order, keep those with d < radius, the first one
    found fills every slot before the later ones overwrite theirs; zeros when none is found."""
    out = []
    for q in query:
        idx, count = [0] * num_samples, 0
        for j, p in enumerate(points):
            if math.dist(q, p) < radius:
                if count == 0:
                    idx = [j] * num_samples
                idx[count] = j
                count += 1
                if count == num_samples:
                    break
        out.append(idx)
    return out


def test_ball_query_matches_the_pointnet2_loop_including_padding_and_empty_balls():
    g = torch.Generator().manual_seed(7)
    points = torch.rand(2, 60, 3, generator=g)
    query = torch.cat([points[:, :10], torch.full((2, 2, 3), 5.0)], 1)  # two queries far from every point
    for radius, samples in ((0.15, 4), (0.3, 8), (2.0, 16), (0.3, 70)):
        idx = ball_query(query, points, radius, samples)
        assert idx.shape == (2, 12, samples) and idx.dtype == torch.int64
        for b in range(2):
            assert idx[b].tolist() == ball_query_reference(query[b].tolist(), points[b].tolist(), radius, samples)
    idx = ball_query(query, points, 0.15, 4)
    assert (idx[:, 10:] == 0).all()                                        # empty ball: index 0 everywhere
    assert (idx[:, :10, 0] <= torch.arange(10)).all()                      # a query point finds itself or earlier
    with pytest.raises(ValueError, match="radius > 0"):
        ball_query(query, points, 0.0, 4)
