"""SUN RGB-D detection on votenet's prepared format: synthetic writer (votenet's own box convention) -> reader,
the half-size / heading conversion, the oriented augmentation, per-point classes, the DataModule and bad input."""
import itertools
import shutil

import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay

from datamodules.detection_common import DetectionFormatError
from datamodules.sunrgbd import CLASS_NAMES, SUNRGBDDataModule, load_scene, votenet_to_boxes
from datamodules.synthetic.sunrgbd import generate_sunrgbd
from datamodules.synthetic.sunrgbd import main as synthetic_main
from datamodules.synthetic.sunrgbd import votenet_corners
from lang3d.data.boxes_transforms import (RandomFlipBoxes, RandomRotateBoxesZ, RandomScaleBoxes, box_segment,
                                          points_in_boxes)

TRAIN = "sunrgbd_pc_bbox_votes_50k_v1_train"


@pytest.fixture(scope="module")
def sunrgbd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sunrgbd")
    splits = generate_sunrgbd(root, num_train=3, num_val=2, points_per_scene=3000, seed=0)
    return root, splits


def corners(box):
    """[8,3] corners of a project-convention box: R_z(heading) (±dx/2, ±dy/2, ±dz/2) + centre."""
    c, s = np.cos(box[6]), np.sin(box[6])
    local = np.array(list(itertools.product(*[(-d / 2, d / 2) for d in box[3:6]])))
    return np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1) + box[:3]


def inside(points, boxes):
    """[P,G] reference: point inside the convex hull of the box's corners."""
    columns = [Delaunay(corners(b)).find_simplex(points) >= 0 for b in boxes]
    return np.stack(columns, 1) if columns else np.zeros((len(points), 0), bool)


def same_corners(a, b, atol=1e-4):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return (d.min(1) < atol).all() and (d.min(0) < atol).all()


def _scene(root, name="000004"):
    return load_scene(root / TRAIN, name)


def test_writer_matches_votenet_formats(sunrgbd):
    root, splits = sunrgbd
    assert splits == {"train": ["000003", "000004", "000005"], "val": ["000001", "000002"]}
    assert (root / "sunrgbd_trainval" / "train_data_idx.txt").read_text() == "3\n4\n5\n"
    folder = root / TRAIN
    with np.load(folder / "000004_pc.npz") as f:
        assert f.files == ["pc"] and f["pc"].dtype == np.float64 and f["pc"].shape == (3000, 6)
        assert f["pc"][:, 3:].min() >= 0 and f["pc"][:, 3:].max() <= 1
    with np.load(folder / "000004_votes.npz") as f:
        assert f.files == ["point_votes"] and f["point_votes"].dtype == np.float64
        assert f["point_votes"].shape == (3000, 10)
    bbox = np.load(folder / "000004_bbox.npy")
    assert bbox.dtype == np.float64 and bbox.shape[1] == 8 and len(bbox) >= 2
    assert np.load(folder / "000003_bbox.npy").shape == (0, 8)  # the empty scene is kept


def test_conversion_of_a_hand_made_votenet_box():
    bbox = np.array([[1.0, 2.0, 0.5, 0.4, 0.2, 0.3, np.pi / 2, 3]])  # half sizes; heading from +X towards -Y
    boxes, labels = votenet_to_boxes(bbox)
    np.testing.assert_allclose(boxes, [[1, 2, 0.5, 0.8, 0.4, 0.6, -np.pi / 2]])
    assert labels.tolist() == [3]
    assert same_corners(corners(boxes[0]), votenet_corners(bbox[0, :3], bbox[0, 3:6], bbox[0, 6]))
    # votenet's heading pi/2 points the box's long (l) axis along -Y
    probes = np.array([[1.0, 2.0 - 0.35, 0.5], [1.0 + 0.35, 2.0, 0.5]])
    assert points_in_boxes(probes, boxes)[:, 0].tolist() == [True, False]


def test_votenet_in_box_points_lie_in_the_converted_boxes(sunrgbd):
    root, splits = sunrgbd
    for split, names in splits.items():
        for name in names:
            folder = root / f"sunrgbd_pc_bbox_votes_50k_v1_{split}"
            scene = load_scene(folder, name)
            with np.load(folder / f"{name}_votes.npz") as f:
                marked = f["point_votes"][:, 0] == 1
            bbox = np.load(folder / f"{name}_bbox.npy")
            np.testing.assert_allclose(scene["gt_boxes"][:, 3:6], 2 * bbox[:, 3:6], rtol=1e-6)
            np.testing.assert_allclose(scene["gt_boxes"][:, 6], -bbox[:, 6], rtol=1e-6)
            ref = inside(scene["coord"].astype(np.float64), scene["gt_boxes"].astype(np.float64))
            np.testing.assert_array_equal(ref.any(1), marked)
            np.testing.assert_array_equal(scene["vote_mask"] == 1, marked)
            ends = scene["coord"][marked] + scene["vote"][marked, :3]
            hit = np.linalg.norm(ends[:, None] - scene["gt_boxes"][None, :, :3], axis=-1) < 1e-5
            assert (hit & ref[marked]).any(1).all()  # the vote ends at the centre of a box holding the point
            volume = np.prod(bbox[:, 3:6], 1)
            smallest = [int(bbox[np.flatnonzero(r)[np.argmin(volume[r])], 7]) if r.any() else -1 for r in ref]
            np.testing.assert_array_equal(scene["segment"], smallest)


def test_points_in_boxes_matches_the_hull_reference():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-1, 1, (5, 3)), rng.uniform(0.2, 1.5, (5, 3)), rng.uniform(-4, 4, (5, 1))], 1)
    points = rng.uniform(-2, 2, (3000, 3))
    np.testing.assert_array_equal(points_in_boxes(points, boxes), inside(points, boxes))


def test_box_segment_takes_the_smallest_box_holding_the_point():
    boxes = np.array([[0, 0, 0, 4, 4, 4, 0.3], [0.5, 0, 0, 1, 1, 1, 0.0], [9, 9, 9, 1, 1, 1, 0]], float)
    points = np.array([[0.5, 0, 0], [-1.5, 0, 0], [5, 5, 5], [9, 9, 9]])
    assert box_segment(points, boxes, np.array([7, 2, 4])).tolist() == [2, 7, -1, 4]
    assert box_segment(points, np.zeros((0, 7)), np.zeros(0, np.int64)).tolist() == [-1] * 4


def _check_consistent(before, after):
    """Inside stays inside; every vote still ends at the centre of a box holding its point."""
    was = inside(before["coord"].astype(np.float64), before["gt_boxes"].astype(np.float64))
    now = inside(after["coord"].astype(np.float64), after["gt_boxes"].astype(np.float64))
    np.testing.assert_array_equal(was, now)
    mask = after["vote_mask"] == 1
    for slot in range(3):
        ends = after["coord"][mask] + after["vote"][mask, 3 * slot:3 * slot + 3]
        hit = np.linalg.norm(ends[:, None] - after["gt_boxes"][None, :, :3], axis=-1) < 1e-4
        assert (hit & now[mask]).any(1).all()


def test_oriented_flip_rotation_and_scale_move_boxes_like_their_corners(sunrgbd):
    root, _ = sunrgbd
    scene = _scene(root)
    rng = np.random.default_rng(5)
    flipped = RandomFlipBoxes(0, p=1.0, oriented=True)(scene, rng)
    np.testing.assert_allclose(np.cos(flipped["gt_boxes"][:, 6]), -np.cos(scene["gt_boxes"][:, 6]), atol=1e-6)
    np.testing.assert_allclose(np.sin(flipped["gt_boxes"][:, 6]), np.sin(scene["gt_boxes"][:, 6]), atol=1e-6)
    mirror = np.diag([-1.0, 1.0, 1.0])
    rotated = RandomRotateBoxesZ(np.pi / 6, oriented=True)(scene, rng)
    i = int(np.argmax(np.linalg.norm(scene["coord"][:, :2], axis=1)))
    theta = np.angle(complex(*rotated["coord"][i, :2]) / complex(*scene["coord"][i, :2]))
    assert 1e-3 < abs(theta) <= np.pi / 6 + 1e-6
    turn = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    scaled = RandomScaleBoxes((0.85, 1.15))(scene, rng)
    factor = np.linalg.norm(scaled["coord"][i]) / np.linalg.norm(scene["coord"][i])
    assert 0.85 <= factor <= 1.15 and abs(factor - 1) > 1e-3
    for out, matrix in ((flipped, mirror), (rotated, turn), (scaled, np.eye(3) * factor)):
        np.testing.assert_allclose(out["coord"], scene["coord"] @ matrix.T, atol=1e-5)
        for before, after in zip(scene["gt_boxes"].astype(np.float64), out["gt_boxes"].astype(np.float64)):
            assert same_corners(corners(after), corners(before) @ matrix.T)
        _check_consistent(scene, out)


def test_empty_scene_is_a_valid_sample_and_batch(sunrgbd):
    root, _ = sunrgbd
    scene = _scene(root, "000003")
    assert scene["gt_boxes"].shape == (0, 7) and scene["gt_labels"].shape == (0,)
    assert (scene["segment"] == -1).all() and (scene["vote_mask"] == 0).all()
    dm = SUNRGBDDataModule(str(root), num_points=1500, batch_size=3, num_workers=0)
    dm.setup("fit")
    index = dm.train_set.names.index("000003")
    sample = dm.train_set[index]
    assert sample["gt_boxes"].shape == (0, 7) and (sample["vote"] == 0).all()


def test_datamodule_contract_and_published_mean_sizes(sunrgbd):
    root, _ = sunrgbd
    dm = SUNRGBDDataModule(str(root), num_points=2000, batch_size=3, val_batch_size=2, num_workers=0, seed=1)
    assert dm.class_names == ["bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night stand",
                              "bookshelf", "bathtub"] == list(CLASS_NAMES)
    assert dm.num_classes == 10 and dm.oriented is True
    assert dm.mean_size.shape == (10, 3) and dm.mean_size.dtype == np.float32
    np.testing.assert_allclose(dm.mean_size[0], [2.114256, 1.620300, 0.927272])    # bed
    np.testing.assert_allclose(dm.mean_size[7], [0.500618, 0.632163, 0.683424])    # night_stand
    np.testing.assert_allclose(dm.mean_size[9], [0.765840, 1.398258, 0.472728])    # bathtub
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    total = len(batch["coord"])
    assert batch["coord"].shape == (total, 4) and batch["vote"].shape == (total, 9) and len(batch["names"]) == 3
    assert torch.equal(torch.floor(batch["xyz"].double() / 0.025).int(), batch["coord"][:, 1:])
    starts = [0] + batch["offset"].tolist()[:-1]
    for b, (start, end) in enumerate(zip(starts, batch["offset"].tolist())):
        boxes = batch["gt_boxes"][b].double().numpy()
        xyz = batch["xyz"][start:end].double().numpy()
        mask = batch["vote_mask"][start:end].numpy() == 1
        ends = xyz[mask] + batch["vote"][start:end, :3].double().numpy()[mask]
        assert not len(boxes) or (np.linalg.norm(ends[:, None] - boxes[None, :, :3], axis=-1).min(1) < 1e-4).all()
        labelled = batch["segment"][start:end].numpy() >= 0
        assert not len(boxes) or inside(xyz[labelled], boxes).any(1).all()  # classes come from the boxes
    val = next(iter(dm.val_dataloader()))
    assert val["names"] == ["000001", "000002"] and len(val["gt_boxes"]) == 2


def test_scene_lists_from_index_files_or_the_folder(sunrgbd, tmp_path):
    root, splits = sunrgbd
    shutil.copytree(root, tmp_path / "r")
    (tmp_path / "r" / "sunrgbd_trainval" / "val_data_idx.txt").write_text("2\n1\n")
    dm = SUNRGBDDataModule(str(tmp_path / "r"), num_workers=0)
    assert dm.scene_names("val") == ["000002", "000001"]
    shutil.rmtree(tmp_path / "r" / "sunrgbd_trainval")
    assert dm.scene_names("val") == ["000001", "000002"] and dm.scene_names("train") == splits["train"]
    (tmp_path / "r" / "val_data_idx.txt").write_text("1\n7\n")
    with pytest.raises(DetectionFormatError, match="file of a listed val scene is missing") as err:
        dm.setup("validate")
    assert "000007_pc.npz" in str(err.value)
    (tmp_path / "r" / "val_data_idx.txt").write_text("1\nscene7\n")
    with pytest.raises(DetectionFormatError, match="val_data_idx.txt line 2: expected a positive image id"):
        dm.scene_names("val")


def _rewrite(folder, name, suffix, change):
    path = folder / f"{name}{suffix}"
    if suffix == "_bbox.npy":
        np.save(path, change(np.load(path)))
    else:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        np.savez(path, **change(arrays))
    return path


def _nan(arrays):
    arrays["pc"][7, 2] = np.nan
    return arrays


def _class12(bbox):
    bbox[1, 7] = 12
    return bbox


@pytest.mark.parametrize("suffix, change, message", [
    ("_bbox.npy", _class12, r"class id 12, expected an integer 0..9"),
    ("_pc.npz", _nan, "pc holds NaN or infinite values"),
    ("_votes.npz", lambda a: {"point_votes": a["point_votes"][:-1]}, r"expected \(3000, 10\)"),
    ("_pc.npz", lambda a: {"points": a["pc"]}, "has no array 'pc'"),
    ("_votes.npz", lambda a: {"point_votes": a["point_votes"] * 0.5}, "column 0 .* other than 0/1"),
    ("_bbox.npy", lambda b: b[:, :7], r"bbox has shape \(\d+, 7\), expected \(N, 8\)"),
])
def test_bad_files_are_named(sunrgbd, tmp_path, suffix, change, message):
    root, _ = sunrgbd
    folder = tmp_path / TRAIN
    shutil.copytree(root / TRAIN, folder)
    path = _rewrite(folder, "000004", suffix, change)
    with pytest.raises(DetectionFormatError, match=message) as err:
        load_scene(folder, "000004")
    assert str(path) in str(err.value)


def test_synthetic_cli_writes_the_layout(tmp_path):
    synthetic_main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--points", "600", "--version", "v2"])
    assert (tmp_path / "sunrgbd_trainval" / "val_data_idx.txt").read_text() == "1\n"
    scene = load_scene(tmp_path / "sunrgbd_pc_bbox_votes_50k_v2_train", "000003")
    assert len(scene["coord"]) == 600 and len(scene["gt_boxes"]) >= 2
    assert SUNRGBDDataModule(str(tmp_path), version="v2").scene_names("train") == ["000002", "000003"]
