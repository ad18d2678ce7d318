"""PointGroup clustering on a hand-made scene (expected index sets written out by construction), the neighbour-capped
radius graph against brute-force connected components, cluster IoUs and mask NMS against set arithmetic."""
import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from text4point.instance_clustering import Clusters, best_iou, cluster_iou, cluster_points, mask_nms, propose_instances


def _grid(x0: float, x1: float, y0: float, y1: float, z: float = 0.0, step: float = 0.05) -> np.ndarray:
    xs, ys = np.arange(x0, x1 + 1e-9, step), np.arange(y0, y1 + 1e-9, step)
    return np.stack(np.meshgrid(xs, ys, [z], indexing="ij"), -1).reshape(-1, 3)


def _scene():
    """Objects (class, points): A (1) and B (2) touch (5 cm apart at the seam); C1, C2 (3) are 1 m apart; D (4) is
    one object split by a 0.5 m gap; E (5) has 3 points; F (0) is a floor plane far away; G (-1) unlabelled."""
    parts = [("A", 1, _grid(0, 1, 0, 0.5)), ("B", 2, _grid(1.05, 2, 0, 0.5)),
             ("C1", 3, _grid(0, 0.3, 2, 2.3)), ("C2", 3, _grid(1.3, 1.6, 2, 2.3)),
             ("D_left", 4, _grid(4, 4.3, 0, 0.3)), ("D_right", 4, _grid(4.8, 5.1, 0, 0.3)),
             ("E", 5, _grid(7, 7.1, 0, 0.05)[:3]), ("F", 0, _grid(0, 2, 5, 6, z=-1)),
             ("G", -1, _grid(9, 9.2, 0, 0.2))]
    coord = np.concatenate([p for _, _, p in parts])
    labels = np.concatenate([np.full(len(p), c) for _, c, p in parts])
    bounds = np.cumsum([0] + [len(p) for _, _, p in parts])
    index = {name: np.arange(bounds[i], bounds[i + 1]) for i, (name, _, _) in enumerate(parts)}
    index["D"] = np.concatenate([index["D_left"], index["D_right"]])
    # perfect offsets: every point of an object (D as a whole) points at its object's centre
    offset = np.zeros_like(coord)
    for name in ("A", "B", "C1", "C2", "D", "E", "F", "G"):
        offset[index[name]] = coord[index[name]].mean(0) - coord[index[name]]
    return coord, labels, offset, index


def _as_sets(clusters: Clusters) -> list[tuple[int, frozenset]]:
    return [(int(clusters.labels[i]), frozenset(clusters.members(i).tolist())) for i in range(len(clusters))]


def _expected(index, names_and_labels) -> list[tuple[int, frozenset]]:
    return [(label, frozenset(index[name].tolist())) for name, label in names_and_labels]


def test_original_coordinates_separate_classes_and_distant_objects_but_not_the_split_one():
    coord, labels, offset, index = _scene()
    got = cluster_points(coord, labels, radius=0.06, min_size=4, skip_classes=[0])
    # ordered by class, then by smallest member; F skipped, E (3 points) too small, G unlabelled
    assert _as_sets(got) == _expected(index, [("A", 1), ("B", 2), ("C1", 3), ("C2", 3), ("D_left", 4),
                                              ("D_right", 4)])
    assert not got.shifted.any()
    for i in range(len(got)):  # members listed cluster by cluster, ascending
        assert np.array_equal(got.point_index[got.cluster_index == i], got.members(i))
    assert np.all(np.diff(got.cluster_index) >= 0)


def test_min_size_and_skipped_classes():
    coord, labels, _, index = _scene()
    got = _as_sets(cluster_points(coord, labels, radius=0.06, min_size=3))
    assert (5, frozenset(index["E"].tolist())) in got and (0, frozenset(index["F"].tolist())) in got
    got = _as_sets(cluster_points(coord, labels, radius=0.06, min_size=60, skip_classes=[0, 4]))
    big = [(name, label) for name, label in [("A", 1), ("B", 2), ("C1", 3), ("C2", 3)] if len(index[name]) >= 60]
    assert got == _expected(index, big) and len(big) == 2  # A, B: 231 and 220 points; C1, C2: 49 each


def test_shifted_coordinates_merge_the_split_object():
    coord, labels, offset, index = _scene()
    got = propose_instances(coord, offset, labels, radius=0.06, min_size=4, skip_classes=[0])
    original = [("A", 1), ("B", 2), ("C1", 3), ("C2", 3), ("D_left", 4), ("D_right", 4)]
    shifted = [("A", 1), ("B", 2), ("C1", 3), ("C2", 3), ("D", 4)]
    assert _as_sets(got) == _expected(index, original) + _expected(index, shifted)
    assert got.shifted.tolist() == [False] * 6 + [True] * 5


def test_capped_radius_graph_matches_brute_force_components():
    rng = np.random.default_rng(0)
    coord = rng.uniform(0, 1.5, size=(300, 3))
    labels = rng.integers(0, 2, size=300)
    radius = 0.2
    degree = int(((np.linalg.norm(coord[:, None] - coord[None], axis=-1) <= radius).sum(1) - 1).max())
    assert 5 < degree < 100
    # a cap of exactly the largest neighbour count keeps every edge: the result must be the exact radius graph's
    got = _as_sets(cluster_points(coord, labels, radius, min_size=1, max_neighbours=degree))
    expected = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        dist = np.linalg.norm(coord[idx, None] - coord[None, idx], axis=-1)
        _, comp = connected_components(dist <= radius, directed=False)
        groups = sorted((idx[comp == k] for k in np.unique(comp)), key=lambda g: g.min())
        expected += [(c, frozenset(g.tolist())) for g in groups]
    assert got == expected and len(expected) > 2


def test_points_exactly_at_the_radius_are_linked():
    coord = np.array([[0.0, 0, 0], [0.25, 0, 0], [0.5, 0, 0], [1.0, 0, 0]])
    got = _as_sets(cluster_points(coord, np.zeros(4, int), radius=0.25))
    assert got == [(0, frozenset({0, 1, 2})), (0, frozenset({3}))]


def _random_clusters(rng, num_points=60, num_clusters=7) -> Clusters:
    members = [np.sort(rng.choice(num_points, size=rng.integers(1, 25), replace=False)) for _ in range(num_clusters)]
    return Clusters(np.concatenate(members), np.repeat(np.arange(num_clusters), [len(m) for m in members]),
                    rng.integers(0, 3, size=num_clusters), np.zeros(num_clusters, bool))


def test_best_iou_and_pairwise_iou_match_set_arithmetic():
    rng = np.random.default_rng(1)
    clusters = _random_clusters(rng)
    instance = rng.integers(-1, 5, size=60)
    got = best_iou(clusters, instance)
    pairwise = cluster_iou(clusters, 60)
    for i in range(len(clusters)):
        a = set(clusters.members(i).tolist())
        ious = [len(a & g) / len(a | g) for g in (set(np.flatnonzero(instance == k).tolist()) for k in range(5))]
        assert got[i] == pytest.approx(max(ious))
        for j in range(len(clusters)):
            b = set(clusters.members(j).tolist())
            assert pairwise[i, j] == pytest.approx(len(a & b) / len(a | b))
    assert best_iou(clusters, np.full(60, -1)).tolist() == [0.0] * len(clusters)


def test_mask_nms_matches_a_naive_greedy_loop():
    rng = np.random.default_rng(2)
    for _ in range(5):
        clusters = _random_clusters(rng, num_points=30, num_clusters=12)
        scores = rng.random(12)
        sets = [set(clusters.members(i).tolist()) for i in range(12)]
        expected = []
        for i in sorted(range(12), key=lambda i: -scores[i]):
            if all(len(sets[i] & sets[j]) / len(sets[i] | sets[j]) <= 0.3 for j in expected):
                expected.append(i)
        assert mask_nms(clusters, scores, 30, 0.3).tolist() == expected
    assert len(expected) < 12


def test_select_renumbers_and_incidence_marks_members():
    clusters = _random_clusters(np.random.default_rng(3))
    picked = clusters.select(np.array([4, 1]))
    assert picked.labels.tolist() == clusters.labels[[4, 1]].tolist()
    assert _as_sets(picked) == [_as_sets(clusters)[4], _as_sets(clusters)[1]]
    dense = clusters.incidence(60).toarray()
    assert dense.shape == (7, 60) and all(set(np.flatnonzero(dense[i]).tolist()) == set(clusters.members(i).tolist())
                                          for i in range(7))
    empty = Clusters.concat([])
    assert len(empty) == 0 and empty.incidence(5).shape == (0, 5) and len(empty.select([])) == 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"coord must be \[N, 3\]"):
        cluster_points(np.zeros((4, 2)), np.zeros(4, int), 0.1)
    with pytest.raises(ValueError, match=r"labels must be \[4\]"):
        cluster_points(np.zeros((4, 3)), np.zeros(5, int), 0.1)
    with pytest.raises(ValueError, match="radius > 0"):
        cluster_points(np.zeros((4, 3)), np.zeros(4, int), 0.0)
    with pytest.raises(ValueError, match=r"offset must be \[4, 3\]"):
        propose_instances(np.zeros((4, 3)), np.zeros((3, 3)), np.zeros(4, int), 0.1)
