"""ModelNet40: the h5 and resampled readers against the synthetic generator, the DataModule (FPS, unit sphere,
cache, ULIP pickle), the prompts, and every kind of bad input."""
import json
import pickle
import shutil
import warnings

import h5py
import numpy as np
import pytest
import torch

from datamodules.modelnet40 import (MODELNET40_CLASSES, ModelNet40DataModule, ModelNet40FormatError, class_prompts,
                                    load_h5_split, prompt_names, read_h5, read_shape, read_split_ids, resolve_format,
                                    templates)
from datamodules.modelnet40.h5 import H5_DIR
from datamodules.modelnet40.resampled import RESAMPLED_DIR
from datamodules.synthetic.modelnet40 import generate_modelnet40
from datamodules.synthetic.modelnet40 import main as synthetic_main
from lang3d.data.object_samples import PointCountError
from lang3d.data.point_ops import farthest_point_sample_np

CLASSES = ("cone", "table", "cup", "stairs")


@pytest.fixture(scope="module")
def modelnet(tmp_path_factory):
    """4 classes x (2 train + 1 test) shapes: 600-point txt files, 256-point h5 shards of at most 5 shapes."""
    root = tmp_path_factory.mktemp("modelnet40")
    info = generate_modelnet40(root, CLASSES, train_per_class=2, test_per_class=1, points=600, h5_points=256,
                               shard_size=5, seed=0)
    return root, info


@pytest.fixture
def copy(modelnet, tmp_path):
    """A private copy of the fixture data (for tests that damage it)."""
    shutil.copytree(modelnet[0], tmp_path / "data")
    return tmp_path / "data"


def _dm(root, tmp_path, **kw):
    args = dict(num_workers=0, batch_size=4, cache_dir=str(tmp_path / "cache"))
    return ModelNet40DataModule(str(root), **{**args, **kw})


def _all(loader):
    batches = list(loader)
    return batches, {k: [x for b in batches for x in b.get(k, [])] for k in ("name", "label")}


def chamfer(a, b):
    d = ((a[:, None] - b[None]) ** 2).sum(-1)
    return d.min(1).mean() + d.min(0).mean()


def test_resampled_files_read_back(modelnet):
    root, info = modelnet
    folder = root / RESAMPLED_DIR
    for split in ("train", "test"):
        assert read_split_ids(folder, split) == [shape_id for shape_id, _ in info[split]]
    path = folder / "cone" / "cone_0001.txt"
    values = read_shape(path)
    independent = np.array([[float(v) for v in line.split(",")] for line in path.read_text().splitlines()])
    assert values.shape == (600, 6) and values.dtype == np.float32
    np.testing.assert_allclose(values, independent, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(values[:, 3:], axis=1), 1, atol=1e-5)  # unit normals
    assert np.linalg.norm(values[:, :3], axis=1).max() == pytest.approx(1, abs=1e-5)
    assert (folder / "modelnet40_shape_names.txt").read_text().split() == list(MODELNET40_CLASSES)


def test_h5_shards_read_back(modelnet):
    root, info = modelnet
    folder = root / H5_DIR
    points, labels, ids, _ = load_h5_split(folder, "train", 40)
    assert points.shape == (8, 256, 3) and points.dtype == np.float32 and labels.dtype == np.int64
    assert sorted(zip(ids, labels.tolist())) == sorted(info["train"])
    lines = (folder / "train_files.txt").read_text().split()
    assert lines == [f"data/{H5_DIR}/ply_data_train0.h5", f"data/{H5_DIR}/ply_data_train1.h5"]
    with h5py.File(folder / "ply_data_train1.h5", "r") as f:  # independent read of one shard
        assert f["label"].dtype == np.uint8 and f["label"].shape == (3, 1)
        np.testing.assert_array_equal(points[5:], f["data"][:])
        assert json.loads((folder / "ply_data_train_1_id2file.json").read_text())[0] == \
            f"{MODELNET40_CLASSES[f['label'][0, 0]]}/{ids[5]}.ply"


def test_h5_and_resampled_hold_the_same_shapes(modelnet):
    root, info = modelnet
    points, labels, ids, _ = load_h5_split(root / H5_DIR, "test", 40)
    txt = {i: read_shape(root / RESAMPLED_DIR / i.rsplit("_", 1)[0] / f"{i}.txt")[:, :3] for i in ids}
    assert dict(zip(ids, labels.tolist())) == dict(info["test"])
    for cloud, shape_id in zip(points, ids):  # the txt cloud nearest (Chamfer) to each h5 cloud is its own shape
        assert min(txt, key=lambda other: chamfer(cloud, txt[other])) == shape_id


@pytest.mark.parametrize("fmt,num_points", [("h5", 128), ("resampled", 256)])
def test_datamodule_serves_fps_points_in_the_unit_sphere(modelnet, tmp_path, fmt, num_points):
    root, info = modelnet
    dm = _dm(root, tmp_path, format=fmt, num_points=num_points)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names == list(MODELNET40_CLASSES)
    batches, seen = _all(dm.val_dataloader())
    assert sorted(zip(seen["name"], seen["label"])) == sorted((i, label) for i, label in info["test"])
    batch = batches[0]
    assert batch["points"].shape == (4, num_points, 3) and batch["label"].dtype == torch.int64
    points = batch["points"].double()
    assert torch.allclose(points.mean(1), torch.zeros(1, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(points.norm(dim=-1).amax(1), torch.ones(4, dtype=torch.float64), atol=1e-6)
    ds = dm.datasets["test"]
    name = batch["name"][0]
    raw, _ = ds.cloud(ds.names.index(name))
    picked = raw[farthest_point_sample_np(raw, num_points)].astype(np.float64)  # independent: FPS then normalise
    picked -= picked.mean(0)
    np.testing.assert_allclose(batch["points"][0].numpy(), picked / np.linalg.norm(picked, axis=1).max(), atol=1e-6)
    assert (dm.cache_root("h5" if fmt == "h5" else "txt") / f"{name}.npy").is_file()
    again, _ = _all(_dm(root, tmp_path, format=fmt, num_points=num_points).val_dataloader())  # from the cache
    assert torch.equal(again[0]["points"], batch["points"])
    assert len(list(dm.train_dataloader())) == 2  # 8 training shapes


def test_format_resolution(modelnet, tmp_path):
    root, _ = modelnet
    assert resolve_format(root) == ("resampled", root / RESAMPLED_DIR)
    assert resolve_format(root, "h5") == ("h5", root / H5_DIR)
    assert resolve_format(root / H5_DIR) == ("h5", root / H5_DIR)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_format(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train,test}_files.txt"):
        resolve_format(root / RESAMPLED_DIR, "h5")
    with pytest.raises(ValueError, match="format must be one of"):
        resolve_format(root, "off")


def test_ulip_pickle_is_read_when_present(copy, tmp_path):
    folder = copy / RESAMPLED_DIR
    ids = read_split_ids(folder, "test")
    clouds = [read_shape(folder / i.rsplit("_", 1)[0] / f"{i}.txt")[:300] for i in ids]
    labels = [np.array([MODELNET40_CLASSES.index(i.rsplit("_", 1)[0])], dtype=np.int32) for i in ids]
    with open(folder / "modelnet40_test_300pts_fps.dat", "wb") as f:
        pickle.dump([clouds, labels], f)
    dm = _dm(copy, tmp_path, num_points=300)
    batches, seen = _all(dm.test_dataloader())
    assert seen["name"] == ids and seen["label"] == [int(label[0]) for label in labels]
    first = clouds[0][:, :3].astype(np.float64) - clouds[0][:, :3].mean(0)
    np.testing.assert_allclose(batches[0]["points"][0].numpy(), first / np.linalg.norm(first, axis=1).max(),
                               atol=1e-6)
    txt, _ = _all(_dm(copy, tmp_path, num_points=300, use_ulip_cache=False).test_dataloader())
    assert not torch.equal(txt[0]["points"], batches[0]["points"])  # FPS from the 600-point files instead


def test_prompts_are_ulips_names_and_templates(modelnet, tmp_path):
    assert len(prompt_names()) == 40 and len(templates()) == 64
    assert list(prompt_names()) == [c.replace("_", " ") for c in MODELNET40_CLASSES]
    assert templates()[0] == "a point cloud model of {}." and all(t.count("{}") == 1 for t in templates())
    prompts = class_prompts()
    assert len(prompts) == 40 and all(len(p) == 64 for p in prompts)
    assert prompts[15][0] == "a point cloud model of flower pot."
    dm = _dm(modelnet[0], tmp_path, num_points=256)
    dm.setup("test")
    assert dm.prompt_names == list(prompt_names())
    dm.class_names = ["glass_box", "cone"]
    assert dm.prompt_names == ["glass box", "cone"]


def test_h5_without_label_names_file_and_key(copy):
    shard = copy / H5_DIR / "ply_data_test0.h5"
    with h5py.File(shard, "a") as f:
        del f["label"]
    with pytest.raises(ModelNet40FormatError, match=rf"{shard}: no dataset 'label'"):
        read_h5(shard, 40)


def test_label_out_of_range_names_file_and_index(copy):
    shard = copy / H5_DIR / "ply_data_train0.h5"
    with h5py.File(shard, "a") as f:
        f["label"][3, 0] = 40
    with pytest.raises(ModelNet40FormatError, match=rf"{shard} dataset 'label': label 40 at index 3 is outside 0..39"):
        load_h5_split(copy / H5_DIR, "train", 40)


def test_nan_and_empty_clouds_are_skipped_counted_and_reported(copy, tmp_path):
    with h5py.File(copy / H5_DIR / "ply_data_test0.h5", "a") as f:
        f["data"][1, 7, 2] = np.nan
    dm = _dm(copy, tmp_path, format="h5", num_points=128)
    with pytest.warns(UserWarning, match=r"skipped shapes \{'nonfinite_cloud': 1\}"):
        dm.prepare_data()
    batches, seen = _all(dm.test_dataloader())
    assert sum(b["skipped"]["nonfinite_cloud"] for b in batches) == 1 and len(seen["name"]) == 3
    folder = copy / RESAMPLED_DIR
    first, second = read_split_ids(folder, "test")[:2]
    (folder / first.rsplit("_", 1)[0] / f"{first}.txt").write_text("")
    path = folder / second.rsplit("_", 1)[0] / f"{second}.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["nan,0,0,0,0,1"] + lines[1:]) + "\n")
    dm = _dm(copy, tmp_path, format="resampled", num_points=128)
    with pytest.warns(UserWarning, match=r"test .*skipped shapes \{'empty_cloud': 1, 'nonfinite_cloud': 1\}"):
        dm.prepare_data()
    assert dm.skipped["test"] == {"empty_cloud": 1, "nonfinite_cloud": 1}
    batches, seen = _all(dm.test_dataloader())
    assert len(seen["name"]) == 2 and first not in seen["name"] and second not in seen["name"]


def test_too_few_points_is_an_error_unless_repeat_is_allowed(modelnet, tmp_path):
    dm = _dm(modelnet[0], tmp_path, format="h5", num_points=300, fps_cache=False)
    dm.setup("test")
    with pytest.raises(PointCountError, match=r"ply_data_test0.h5 shape 0 \(\w+\): has 256 points, fewer than the 300"):
        next(iter(dm.test_dataloader()))
    dm = _dm(modelnet[0], tmp_path, format="resampled", num_points=700, allow_repeat=True)
    batch = next(iter(dm.test_dataloader()))
    assert batch["points"].shape == (4, 700, 3)
    assert torch.equal(batch["points"][:, 600:], batch["points"][:, :100])


def test_malformed_resampled_inputs_name_the_file(copy, tmp_path):
    folder = copy / RESAMPLED_DIR
    path = folder / "cup" / "cup_0001.txt"
    path.write_text("0.1,0.2\n0.3,0.4\n")
    with pytest.raises(ModelNet40FormatError, match=rf"{path}: 2 values per line"):
        read_shape(path)
    path.write_text("0.1,0.2,zz,0,0,1\n")
    with pytest.raises(ModelNet40FormatError, match=rf"{path}:"):
        read_shape(path)
    (folder / "modelnet40_train.txt").write_text("cup_0001\nspaceship_0001\n")
    with pytest.raises(ModelNet40FormatError, match="'spaceship_0001' has a class not in"):
        _dm(copy, tmp_path).setup("fit")
    (folder / "cone" / "cone_0003.txt").unlink()
    with pytest.raises(FileNotFoundError, match="cone_0003.txt does not exist"):
        next(iter(_dm(copy, tmp_path, num_points=128, batch_size=16).test_dataloader()))


def test_generator_cli_is_deterministic(tmp_path):
    for out in ("a", "b"):
        synthetic_main(["--out", str(tmp_path / out), "--classes", "cone", "tent", "--train-per-class", "1",
                        "--test-per-class", "1", "--points", "100", "--h5-points", "64", "--seed", "3"])
    a, b = tmp_path / "a" / RESAMPLED_DIR, tmp_path / "b" / RESAMPLED_DIR
    assert (a / "tent" / "tent_0002.txt").read_text() == (b / "tent" / "tent_0002.txt").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, *_ = load_h5_split(tmp_path / "a" / H5_DIR, "test", 40)
        y, *_ = load_h5_split(tmp_path / "b" / H5_DIR, "test", 40)
    assert np.array_equal(x, y)
