"""Point-cloud transforms: geometric invariants, colour ranges and GridSample against brute-force references."""
import numpy as np
import pytest

from lang3d.data.transforms import (CenterShift, ChromaticJitter, Compose, GridSample, RandomFlipXY, RandomRotateZ,
                                    RandomScale)
from lang3d.geometry.camera import voxelize


def _room(n: int = 400, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    coord = (rng.uniform([-1.0, 2.0, 0.5], [3.0, 5.0, 3.0], size=(n, 3))).astype(np.float32)
    return {"coord": coord, "color": rng.integers(0, 256, size=(n, 3)).astype(np.uint8),
            "segment": rng.integers(0, 13, size=n).astype(np.int64), "name": "Area_1/office_1"}


def _pairwise(coord: np.ndarray) -> np.ndarray:
    c = coord.astype(np.float64)
    return np.linalg.norm(c[:, None] - c[None], axis=-1)


def _frozen(data: dict) -> dict:
    for v in data.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)  # a transform writing into its input would raise
    return data


@pytest.mark.parametrize("transform", [RandomFlipXY(p=0.5), RandomRotateZ((-np.pi, np.pi))])
def test_rigid_transforms_preserve_distances_and_z(transform):
    data = _frozen(_room())
    changed = False
    for seed in range(6):
        out = transform(data, np.random.default_rng(seed))
        np.testing.assert_allclose(_pairwise(out["coord"]), _pairwise(data["coord"]), atol=2e-5)
        np.testing.assert_array_equal(out["coord"][:, 2], data["coord"][:, 2])
        assert out["coord"].dtype == np.float32
        changed |= not np.allclose(out["coord"], data["coord"])
    assert changed


def test_flip_mirrors_about_the_xy_centre():
    data = _room()
    out = RandomFlipXY(p=1.0)(data, np.random.default_rng(0))
    lo, hi = data["coord"].min(0), data["coord"].max(0)
    expected = data["coord"].astype(np.float64).copy()
    expected[:, :2] = (lo[:2] + hi[:2]) - expected[:, :2]
    np.testing.assert_allclose(out["coord"], expected, atol=1e-5)
    assert np.array_equal(RandomFlipXY(p=0.0)(data, np.random.default_rng(0))["coord"], data["coord"])


def test_rotation_matches_explicit_matrix():
    data = _room()
    theta = 0.7
    out = RandomRotateZ((theta, theta))(data, np.random.default_rng(0))
    c = data["coord"].astype(np.float64)
    centre = (c[:, :2].min(0) + c[:, :2].max(0)) / 2
    x, y = c[:, 0] - centre[0], c[:, 1] - centre[1]
    expected = np.stack([np.cos(theta) * x - np.sin(theta) * y + centre[0],
                         np.sin(theta) * x + np.cos(theta) * y + centre[1]], 1)
    np.testing.assert_allclose(out["coord"][:, :2], expected, atol=1e-5)


def test_scale_scales_distances_by_one_factor_in_range():
    data = _frozen(_room(100))
    d0 = _pairwise(data["coord"])
    factors = []
    for seed in range(5):
        d1 = _pairwise(RandomScale((0.8, 1.2))(data, np.random.default_rng(seed))["coord"])
        ratio = d1[d0 > 0] / d0[d0 > 0]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
        assert 0.8 <= ratio[0] <= 1.2
        factors.append(ratio[0])
    assert len(set(np.round(factors, 6))) == 5
    np.testing.assert_allclose(RandomScale((2.0, 2.0))(data, np.random.default_rng(0))["coord"], 2 * data["coord"])


def test_chromatic_jitter_stays_in_range_and_changes_colours():
    data = _frozen(_room(5000))
    data["color"] = np.full_like(data["color"], 128)
    data["color"][:10] = (0, 255, 3)
    out = ChromaticJitter(std=0.05)(data, np.random.default_rng(0))
    assert out["color"].dtype == np.float32
    assert out["color"].min() >= 0 and out["color"].max() <= 255
    noise = out["color"][10:] - 128.0
    assert abs(noise.std() - 0.05 * 255) < 0.5 and abs(noise.mean()) < 0.5
    assert (out["color"] != data["color"]).mean() > 0.99


def test_center_shift_moves_room_to_origin_without_deforming_it():
    data = _room()
    out = CenterShift(apply_z=True)(data)
    c = out["coord"]
    np.testing.assert_allclose((c[:, :2].min(0) + c[:, :2].max(0)) / 2, 0, atol=1e-6)
    assert c[:, 2].min() == 0
    delta = data["coord"] - c
    np.testing.assert_allclose(delta, delta[:1].repeat(len(delta), 0), atol=1e-6)
    np.testing.assert_allclose(CenterShift(apply_z=False)(data)["coord"][:, 2], data["coord"][:, 2])


def _grid_room(seed: int = 0) -> dict:
    """Many points per voxel (0.5 m voxels), labels with an ignore value (-1) mixed in."""
    data = _room(3000, seed)
    data["segment"] = np.random.default_rng(seed + 1).integers(-1, 4, size=3000)
    return data


@pytest.mark.parametrize("mode", ["train", "test"])
def test_grid_sample_voxels_contain_their_points(mode):
    data = _frozen(_grid_room())
    vs = 0.5
    out = GridSample(vs, mode=mode, keep_points=True)(data, np.random.default_rng(0))
    coord, inverse = out["coord"], out["inverse"]
    assert coord.dtype == np.int32 and inverse.dtype == np.int64 and inverse.shape == (3000, 1)
    assert len(np.unique(coord, axis=0)) == len(coord)
    p = data["coord"].astype(np.float64)
    cell = coord[inverse[:, 0]].astype(np.float64)
    assert (cell * vs <= p).all() and (p < (cell + 1) * vs).all()
    ref_coord, ref_inverse = voxelize(data["coord"], vs)
    np.testing.assert_array_equal(coord, ref_coord)
    np.testing.assert_array_equal(inverse[:, 0], ref_inverse)
    assert out["color"].dtype == np.float32 and 0 <= out["color"].min() and out["color"].max() <= 1
    assert out["segment"].dtype == np.int64 and out["segment"].shape == (len(coord),)
    np.testing.assert_array_equal(out["point_segment"], data["segment"])
    np.testing.assert_array_equal(out["point_coord"], data["coord"])
    np.testing.assert_array_equal(out["point_color"], data["color"])
    assert out["name"] == "Area_1/office_1"


def test_grid_sample_test_mode_is_mean_colour_and_mode_label():
    data = _grid_room()
    out = GridSample(0.5, mode="test")(data)
    inverse = out["inverse"][:, 0]
    for v in range(len(out["coord"])):
        members = inverse == v
        np.testing.assert_allclose(out["color"][v], data["color"][members].mean(0) / 255, rtol=1e-6)
        labels, counts = np.unique(data["segment"][members], return_counts=True)
        assert out["segment"][v] == labels[counts == counts.max()].min()


def test_grid_sample_mode_ties_go_to_the_smallest_label():
    data = {"coord": np.array([[0.1, 0.1, 0.1]] * 4 + [[1.1, 0.1, 0.1]] * 3, np.float32),
            "color": np.zeros((7, 3), np.uint8), "segment": np.array([7, 3, 3, 7, 5, 2, 9])}
    out = GridSample(1.0, mode="test")(data)
    np.testing.assert_array_equal(out["segment"], [3, 2])


def test_grid_sample_train_mode_takes_one_member_point_per_voxel():
    data = _grid_room()
    data["segment"] = np.arange(3000)  # unique label = point id: reveals which point was chosen
    picks = []
    for seed in (0, 1):
        out = GridSample(0.5, mode="train")(data, np.random.default_rng(seed))
        chosen = out["segment"]
        np.testing.assert_array_equal(out["inverse"][chosen, 0], np.arange(len(out["coord"])))
        np.testing.assert_allclose(out["color"], data["color"][chosen] / 255, rtol=1e-6)
        picks.append(chosen)
    assert (picks[0] != picks[1]).mean() > 0.5  # one uniformly random point, not always the first


def test_pipeline_is_reproducible_from_the_seed():
    pipeline = Compose([CenterShift(), RandomRotateZ(), RandomScale(), RandomFlipXY(), ChromaticJitter(),
                        GridSample(0.1, mode="train")])
    data = _frozen(_room(2000))
    a, b, c = (pipeline(data, np.random.default_rng(s)) for s in (3, 3, 4))
    for key in ("coord", "color", "segment", "inverse"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["color"], c["color"])


def test_grid_sample_rejects_unknown_mode_and_train_without_rng():
    with pytest.raises(ValueError, match="mode"):
        GridSample(0.05, mode="eval")
    with pytest.raises(ValueError, match="rng"):
        GridSample(0.05, mode="train")(_room())


def test_grid_sample_carries_instance_ids_like_labels():
    data = _grid_room()
    data["instance"] = np.random.default_rng(5).integers(-1, 6, size=3000)
    data["segment"] = np.arange(3000)  # unique label = point id: reveals the drawn point
    train = GridSample(0.5, mode="train", keep_points=True)(_frozen(data), np.random.default_rng(0))
    np.testing.assert_array_equal(train["instance"], data["instance"][train["segment"]])
    test = GridSample(0.5, mode="test", keep_points=True)(data)
    inverse = test["inverse"][:, 0]
    for v in range(len(test["coord"])):
        ids, counts = np.unique(data["instance"][inverse == v], return_counts=True)
        assert test["instance"][v] == ids[counts == counts.max()].min()
    for out in (train, test):
        assert out["instance"].dtype == np.int64 and out["instance"].shape == (len(out["coord"]),)
        np.testing.assert_array_equal(out["point_instance"], data["instance"])
    plain = GridSample(0.5, mode="test", keep_points=True)(_grid_room())
    assert "instance" not in plain and "point_instance" not in plain


def test_grid_sample_names_labels_of_the_wrong_length():
    data = {**_room(), "instance": np.zeros(7, np.int64)}
    with pytest.raises(ValueError, match=r"instance must be \[P=400\].*Area_1/office_1"):
        GridSample(0.5, mode="test")(data)
