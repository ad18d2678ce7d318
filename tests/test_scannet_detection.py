"""ScanNet detection on votenet's prepared format: synthetic writer -> reader round trip, vote targets, the
axis-aligned augmentation, point sampling, the detection voxeliser and collate, the DataModule and bad input."""
import itertools
import shutil

import numpy as np
import pytest
import torch

from datamodules.detection_common import DetectionFormatError, collate_detection
from datamodules.scannet_detection import CLASS_NAMES, ScanNetDetectionDataModule, instance_votes, load_scene
from datamodules.synthetic.scannet_detection import OBJECTS, generate_scannet_detection
from datamodules.synthetic.scannet_detection import main as synthetic_main
from lang3d.data.boxes_transforms import RandomFlipBoxes, RandomRotateBoxesZ, SamplePoints, VoxelizeDetection
from lang3d.data.sampling import sharded_loader

# votenet model_util_scannet.py: nyu40ids in type2class order
VOTENET_NYU40 = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]


class FakeTrainer:
    def __init__(self, world_size, global_rank):
        self.world_size, self.global_rank = world_size, global_rank


@pytest.fixture(scope="module")
def scannet(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet_det")
    splits = generate_scannet_detection(root, num_scenes=4, points_per_scene=3000, seed=0, val_fraction=0.5)
    return root, splits


def _files(root, scan):
    return {k: np.load(root / "scannet_train_detection_data" / f"{scan}_{k}.npy")
            for k in ("vert", "sem_label", "ins_label", "bbox")}


def _datamodule(root, **kw):
    kw = {"num_points": 2000, "batch_size": 2, "val_batch_size": 2, "num_workers": 0, **kw}
    return ScanNetDetectionDataModule(str(root), **kw)


def _inside_aabb(points, boxes):
    """[P,G]: point inside the axis-aligned box (1e-5 m slack)."""
    return (np.abs(points[:, None, :] - boxes[None, :, :3]) <= boxes[None, :, 3:6] / 2 + 1e-5).all(-1)


def test_writer_matches_votenet_formats_and_reader_round_trips(scannet):
    root, splits = scannet
    assert splits == {"train": ["scene0000_00", "scene0001_00"], "val": ["scene0002_00", "scene0003_00"]}
    assert (root / "meta_data" / "scannetv2_val.txt").read_text() == "scene0002_00\nscene0003_00\n"
    raw = _files(root, "scene0000_00")
    assert raw["vert"].dtype == np.float32 and raw["vert"].shape == (3000, 6)
    assert raw["sem_label"].dtype == raw["ins_label"].dtype == np.uint32 and raw["sem_label"].shape == (3000,)
    assert raw["bbox"].dtype == np.float64 and raw["bbox"].shape[1] == 7 and len(raw["bbox"]) >= 3
    scene = load_scene(root / "scannet_train_detection_data", "scene0000_00")
    np.testing.assert_array_equal(scene["coord"], raw["vert"][:, :3])
    np.testing.assert_array_equal(scene["color"], raw["vert"][:, 3:])
    expected = [VOTENET_NYU40.index(i) if i in VOTENET_NYU40 else -1 for i in raw["sem_label"].tolist()]
    np.testing.assert_array_equal(scene["segment"], expected)
    np.testing.assert_allclose(scene["gt_boxes"][:, :6], raw["bbox"][:, :6], atol=1e-6)
    assert (scene["gt_boxes"][:, 6] == 0).all() and scene["gt_boxes"].dtype == np.float32
    np.testing.assert_array_equal(scene["gt_labels"], [VOTENET_NYU40.index(int(i)) for i in raw["bbox"][:, 6]])
    assert {2, 1, 40} <= set(raw["sem_label"].tolist())  # floor, walls and the box-less clutter are there
    assert len(CLASS_NAMES) == 18 and CLASS_NAMES[13] == "shower curtain" and CLASS_NAMES[17] == "garbage bin"


def test_every_synthetic_object_box_is_the_extent_of_its_instance(scannet):
    root, _ = scannet
    raw = _files(root, "scene0001_00")
    found = []
    for instance in np.unique(raw["ins_label"]):
        points = raw["vert"][raw["ins_label"] == instance, :3].astype(np.float64)
        label = int(raw["sem_label"][raw["ins_label"] == instance][0])
        if label in OBJECTS:
            found.append([*(points.min(0) + points.max(0)) / 2, *(points.max(0) - points.min(0)), label])
    np.testing.assert_allclose(raw["bbox"], found, atol=1e-6)


def test_votes_end_at_the_centre_of_the_box_of_the_points_instance(scannet):
    root, _ = scannet
    scene = load_scene(root / "scannet_train_detection_data", "scene0000_00")
    raw = _files(root, "scene0000_00")
    mask = scene["vote_mask"] == 1
    np.testing.assert_array_equal(mask, np.isin(raw["sem_label"], VOTENET_NYU40))
    assert (scene["vote"][~mask] == 0).all()
    np.testing.assert_array_equal(scene["vote"][:, :3], scene["vote"][:, 3:6])
    np.testing.assert_array_equal(scene["vote"][:, :3], scene["vote"][:, 6:])
    ends = scene["coord"][mask] + scene["vote"][mask, :3]
    match = np.linalg.norm(ends[:, None, :] - scene["gt_boxes"][None, :, :3], axis=-1) < 1e-5
    assert (match.sum(1) == 1).all()
    box = match.argmax(1)
    np.testing.assert_array_equal(scene["gt_labels"][box], scene["segment"][mask])
    assert _inside_aabb(scene["coord"][mask], scene["gt_boxes"])[np.arange(mask.sum()), box].all()


def test_instance_votes_follow_votenet_rules_on_a_hand_made_scan():
    coord = np.array([[0, 0, 0], [2, 4, 2], [1, 1, 1], [5, 5, 5], [7, 5, 5], [9, 9, 9], [3, 3, 3]], float)
    instance = np.array([1, 1, 1, 2, 2, 0, 3])
    nyu40 = np.array([5, 5, 40, 2, 2, 5, 40])  # instance 1 votes (first point a chair); 2 floor; 0 none; 3 clutter
    vote, mask = instance_votes(coord, instance, nyu40)
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(vote[:3], np.tile(np.array([1.0, 2.0, 1.0]) - coord[:3], 3))
    assert vote.dtype == np.float32 and vote.shape == (7, 9) and (vote[3:] == 0).all()


def test_flips_and_rotation_move_points_votes_and_refit_boxes(scannet):
    root, _ = scannet
    scene = load_scene(root / "scannet_train_detection_data", "scene0000_00")
    rng = np.random.default_rng(0)
    out = RandomFlipBoxes(1, p=1.0, oriented=False)(RandomFlipBoxes(0, p=1.0, oriented=False)(scene, rng), rng)
    np.testing.assert_allclose(out["coord"], -scene["coord"] * [1, 1, -1], atol=1e-6)
    np.testing.assert_allclose(out["gt_boxes"][:, :2], -scene["gt_boxes"][:, :2], atol=1e-6)
    np.testing.assert_array_equal(out["gt_boxes"][:, 2:], scene["gt_boxes"][:, 2:])
    rotated = RandomRotateBoxesZ(np.pi / 36, oriented=False)(scene, rng)
    i = int(np.argmax(np.linalg.norm(scene["coord"][:, :2], axis=1)))
    theta = np.angle(complex(*rotated["coord"][i, :2]) / complex(*scene["coord"][i, :2]))
    assert 1e-4 < abs(theta) <= np.pi / 36 + 1e-6
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(rotated["coord"], scene["coord"] @ rot.T, atol=1e-5)
    for before, after in zip(scene["gt_boxes"], rotated["gt_boxes"]):
        corners = before[:3] + np.array(list(itertools.product([-0.5, 0.5], repeat=3))) * before[3:6]
        turned = corners @ rot.T
        np.testing.assert_allclose(after[:3], (turned.min(0) + turned.max(0)) / 2, atol=1e-5)
        np.testing.assert_allclose(after[3:6], turned.max(0) - turned.min(0), atol=1e-5)
        assert after[6] == 0
    for moved in (out, rotated):  # inside stays inside, votes still end at the centre of the point's box
        was_inside = _inside_aabb(scene["coord"], scene["gt_boxes"])
        assert _inside_aabb(moved["coord"], moved["gt_boxes"])[was_inside].all()
        mask = moved["vote_mask"] == 1
        ends = moved["coord"][mask] + moved["vote"][mask, :3]
        assert (np.linalg.norm(ends[:, None] - moved["gt_boxes"][None, :, :3], axis=-1).min(1) < 1e-5).all()


def test_sample_points_draws_without_replacement_unless_too_few():
    def scene(n):
        ids = np.arange(n)
        return {"coord": np.stack([ids] * 3, 1).astype(np.float32), "color": np.zeros((n, 3)), "segment": ids,
                "vote": np.tile(ids[:, None], 9), "vote_mask": ids % 2, "gt_boxes": np.zeros((0, 7)),
                "gt_labels": np.zeros(0, np.int64)}
    rng = np.random.default_rng(0)
    many = SamplePoints(40)(scene(100), rng)
    assert len(np.unique(many["segment"])) == 40 and len(many["coord"]) == 40
    few = SamplePoints(40)(scene(10), rng)
    assert len(few["segment"]) == 40 and set(few["segment"].tolist()) <= set(range(10))
    for out in (many, few):  # every per-point key indexed by the same choice
        for key in ("coord", "vote"):
            assert (out[key] == out["segment"][:, None]).all()
        np.testing.assert_array_equal(out["vote_mask"], out["segment"] % 2)


def _voxel_scene(rng, n=400):
    coord = rng.uniform(-0.3, 0.3, (n, 3)).astype(np.float32)
    mask = (rng.random(n) < 0.5).astype(np.int64)
    centres = rng.uniform(-1, 1, (n, 3)) * mask[:, None]
    vote = np.where(mask[:, None] == 1, np.tile(centres - coord, 3), 0)
    return {"coord": coord, "color": rng.uniform(0, 255, (n, 3)).astype(np.float32), "segment": rng.integers(-1, 5, n),
            "vote": vote.astype(np.float32), "vote_mask": mask, "gt_boxes": np.zeros((2, 7), np.float32),
            "gt_labels": np.array([1, 2]), "name": "s"}


def test_voxelizer_train_keeps_one_real_point_and_its_labels_per_voxel():
    rng = np.random.default_rng(1)
    scene, size = _voxel_scene(rng), 0.1
    out = VoxelizeDetection(size, "train")(scene, rng)
    grid = np.floor(scene["coord"].astype(np.float64) / size).astype(int)
    assert sorted(map(tuple, out["coord"].tolist())) == sorted(set(map(tuple, grid.tolist())))
    assert out["coord"].dtype == np.int32 and out["xyz"].dtype == np.float32 and out["vote"].shape[1] == 9
    for v in range(len(out["coord"])):
        j = int(np.flatnonzero((scene["coord"] == out["xyz"][v]).all(1))[0])  # the voxel's point is an input point
        np.testing.assert_array_equal(grid[j], out["coord"][v])
        assert out["segment"][v] == scene["segment"][j] and out["vote_mask"][v] == scene["vote_mask"][j]
        np.testing.assert_allclose(out["vote"][v], scene["vote"][j], atol=1e-6)
        np.testing.assert_allclose(out["color"][v], scene["color"][j] / 255, atol=1e-6)
    assert out["name"] == "s" and out["gt_labels"].tolist() == [1, 2]


def test_voxelizer_test_mode_takes_voxel_means_and_first_point_labels():
    rng = np.random.default_rng(2)
    scene, size = _voxel_scene(rng), 0.1
    out = VoxelizeDetection(size, "test")(scene)
    groups = {}
    for j, key in enumerate(map(tuple, np.floor(scene["coord"].astype(np.float64) / size).astype(int).tolist())):
        groups.setdefault(key, []).append(j)
    assert len(groups) == len(out["coord"])
    for v, key in enumerate(map(tuple, out["coord"].tolist())):
        members = groups[key]
        first = members[0]
        np.testing.assert_allclose(out["xyz"][v], scene["coord"][members].mean(0), atol=1e-6)
        np.testing.assert_allclose(out["color"][v], scene["color"][members].mean(0) / 255, atol=1e-6)
        assert out["segment"][v] == scene["segment"][first] and out["vote_mask"][v] == scene["vote_mask"][first]
        end = scene["coord"][first] + scene["vote"][first, :3]
        expected = end - out["xyz"][v] if scene["vote_mask"][first] else np.zeros(3)
        np.testing.assert_allclose(out["vote"][v, 6:], expected, atol=1e-5)


def test_datamodule_batches_follow_the_detection_contract(scannet):
    root, _ = scannet
    dm = _datamodule(root, seed=3)
    dm.setup("fit")
    assert dm.num_classes == 18 and dm.class_names == list(CLASS_NAMES) and dm.oriented is False
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"coord", "offset", "xyz", "color", "segment", "vote", "vote_mask", "gt_boxes", "gt_labels",
                          "names", "skipped"}
    total = len(batch["coord"])
    assert batch["coord"].dtype == torch.int32 and batch["coord"].shape == (total, 4)
    assert batch["offset"].tolist()[-1] == total and len(batch["names"]) == 2
    assert batch["xyz"].shape == (total, 3) and batch["vote"].shape == (total, 9)
    assert batch["xyz"].dtype == batch["vote"].dtype == torch.float32
    assert batch["segment"].dtype == batch["vote_mask"].dtype == torch.int64 and batch["segment"].shape == (total,)
    assert float(batch["color"].min()) >= 0 and float(batch["color"].max()) <= 1
    voxel = torch.floor(batch["xyz"].double() / 0.025).int()
    assert torch.equal(voxel, batch["coord"][:, 1:])
    assert isinstance(batch["gt_boxes"], list) and len(batch["gt_boxes"]) == len(batch["gt_labels"]) == 2
    starts = [0] + batch["offset"].tolist()[:-1]
    for b, (start, end) in enumerate(zip(starts, batch["offset"].tolist())):
        boxes = batch["gt_boxes"][b].numpy()
        assert boxes.dtype == np.float32 and boxes.shape[1] == 7 and batch["gt_labels"][b].dtype == torch.int64
        assert (batch["coord"][start:end, 0] == b).all()
        mask = batch["vote_mask"][start:end].numpy() == 1
        ends = (batch["xyz"][start:end] + batch["vote"][start:end, :3]).numpy()[mask]
        assert mask.any() and (np.linalg.norm(ends[:, None] - boxes[None, :, :3], axis=-1).min(1) < 1e-4).all()
    assert next(iter(dm.val_dataloader()))["names"] == ["scene0002_00", "scene0003_00"]


def test_samples_vary_per_epoch_in_training_only(scannet):
    root, _ = scannet
    dm = _datamodule(root, train_loop=2)
    dm.setup("fit")
    assert len(dm.train_set) == 4
    a, b = dm.train_set[0], dm.train_set[0]
    np.testing.assert_array_equal(a["xyz"], b["xyz"])
    assert not np.array_equal(a["xyz"], dm.train_set[2]["xyz"])  # the loop repeat is drawn anew
    dm.train_set.set_epoch(1)
    dm.val_set.set_epoch(0)
    v0 = dm.val_set[0]
    dm.val_set.set_epoch(1)
    assert not np.array_equal(a["xyz"], dm.train_set[0]["xyz"])
    np.testing.assert_array_equal(v0["xyz"], dm.val_set[0]["xyz"])


def test_sharded_loaders_split_scenes_across_ranks(scannet):
    root, _ = scannet
    dm = _datamodule(root)
    dm.setup("fit")
    ranks = [sharded_loader(dm.train_set, FakeTrainer(2, r), 1, True, 0, 0, collate_detection) for r in range(2)]
    names = [[n for batch in loader for n in batch["names"]] for loader in ranks]
    assert sorted(names[0] + names[1]) == ["scene0000_00", "scene0001_00"]
    evals = [sharded_loader(dm.val_set, FakeTrainer(2, r), 1, False, 0, 0, collate_detection) for r in range(2)]
    assert sorted(n for loader in evals for batch in loader for n in batch["names"]) == ["scene0002_00", "scene0003_00"]
    assert [len(loader) for loader in evals] == [1, 1]


def test_mean_size_from_training_boxes_or_votenet_means_file(scannet, tmp_path):
    root, splits = scannet
    sizes = {}
    for scan in splits["train"]:
        for row in _files(root, scan)["bbox"]:
            sizes.setdefault(VOTENET_NYU40.index(int(row[6])), []).append(row[3:6])
    mean = _datamodule(root).mean_size
    assert mean.shape == (18, 3) and mean.dtype == np.float32
    for k, rows in sizes.items():
        np.testing.assert_allclose(mean[k], np.mean(rows, 0), rtol=1e-6)
    absent = [k for k in range(18) if k not in sizes]
    np.testing.assert_allclose(mean[absent], np.tile(np.concatenate(list(sizes.values())).mean(0), (len(absent), 1)),
                               rtol=1e-6)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    table = np.random.default_rng(0).uniform(0.2, 2, (18, 3))
    np.savez(copy / "meta_data" / "scannet_means.npz", table)
    np.testing.assert_allclose(_datamodule(copy).mean_size, table, rtol=1e-6)


def _break(path, how):
    array = np.load(path)
    if how == "columns":
        array = array[:, :5]
    elif how == "dtype":
        array = array.astype(np.float32)
    elif how == "nan":
        array[3, 1] = np.nan
    elif how == "class":
        array[0, 6] = 2  # floor: not a detection class
    elif how == "pickle":
        array = np.array([{"a": 1}], dtype=object)
    np.save(path, array, allow_pickle=True)


@pytest.mark.parametrize("suffix, how, message", [
    ("vert", "columns", r"vertices has shape \(3000, 5\), expected \(N, 6\)"),
    ("sem_label", "dtype", "sem_label has dtype float32, expected integer"),
    ("vert", "nan", "NaN or infinite values"),
    ("bbox", "class", "class id 2, not one of the 18"),
    ("ins_label", "pickle", "unreadable"),
])
def test_bad_files_are_named(scannet, tmp_path, suffix, how, message):
    root, _ = scannet
    shutil.copytree(root, tmp_path / "r")
    path = tmp_path / "r" / "scannet_train_detection_data" / f"scene0000_00_{suffix}.npy"
    _break(path, how)
    with pytest.raises(DetectionFormatError, match=message) as err:
        load_scene(path.parent, "scene0000_00")
    assert str(path) in str(err.value)


def test_missing_files_of_listed_scenes_are_named(scannet, tmp_path):
    root, _ = scannet
    shutil.copytree(root, tmp_path / "r")
    missing = tmp_path / "r" / "scannet_train_detection_data" / "scene0001_00_bbox.npy"
    missing.unlink()
    with pytest.raises(DetectionFormatError, match="file of a listed train scene is missing") as err:
        _datamodule(tmp_path / "r").setup("fit")
    assert str(missing) in str(err.value)
    (tmp_path / "r" / "meta_data" / "scannetv2_val.txt").unlink()
    with pytest.raises(DetectionFormatError, match="scannetv2_val.txt: file is missing"):
        _datamodule(tmp_path / "r").setup("validate")


def test_empty_scan_without_boxes_is_a_valid_sample(scannet, tmp_path):
    root, _ = scannet
    shutil.copytree(root, tmp_path / "r")
    np.save(tmp_path / "r" / "scannet_train_detection_data" / "scene0002_00_bbox.npy", np.zeros((0, 7)))
    dm = _datamodule(tmp_path / "r")
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["gt_boxes"][0].shape == (0, 7) and batch["gt_labels"][0].shape == (0,)


def test_synthetic_cli_writes_the_layout(tmp_path):
    synthetic_main(["--out", str(tmp_path), "--scenes", "2", "--points", "500"])
    assert (tmp_path / "meta_data" / "scannetv2_train.txt").read_text() == "scene0000_00\n"
    scene = load_scene(tmp_path / "scannet_train_detection_data", "scene0001_00")
    assert len(scene["coord"]) == 500 and len(scene["gt_boxes"]) >= 3
