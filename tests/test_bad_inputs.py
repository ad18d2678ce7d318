"""A catalogue of bad inputs, one case per class: each gives an error that names the file (and what is wrong) or
a counted skip. Two classes are tested where their pipeline is: a NaN pose and an all-zero depth map (counted
skips, test_text4point_pretrain.py::test_invalid_pose_and_empty_depth_are_skipped_and_counted) and an unknown
config key (test_text4point_pretrain.py::test_cli_rejects_a_wrong_config_key). Audio beyond a corrupt file
(truncated, empty, silent, non-finite, shorter than a clip): test_audio.py::test_unusable_audio_gets_a_named_error."""
import shutil

import numpy as np
import pytest
import torch

from datamodules.cap3d.objects import read_point_cloud
from datamodules.modelnet40.h5 import read_h5
from datamodules.s3dis.raw import read_annotation
from datamodules.s3dis.rooms import load_room
from datamodules.scannet.meta import read_split
from datamodules.scannet.scene import ExportedScene
from datamodules.scannet.sens import SensFile
from lang3d.data.audio_files import read_audio
from lang3d.data.object_samples import check_cloud
from lang3d.training.checkpoint import load_pretrained_weights


def garbage(path, data=b"\x00\x01 not this format \xff"):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, read", [
    ("cloud.ply", read_point_cloud),
    ("room.npz", load_room),
    ("shapes.h5", lambda p: read_h5(p, 40)),
    ("scene.sens", SensFile),
    ("sound.wav", read_audio),
])
def test_corrupt_file_is_a_named_error(tmp_path, name, read):
    path = garbage(tmp_path / name)
    with pytest.raises(Exception, match=name):
        read(path)


def test_corrupt_images_of_a_scan_name_the_file(tiny_scannet, tmp_path):
    scene_dir = tmp_path / "scene0000_00"
    shutil.copytree(tiny_scannet / "scans" / "scene0000_00", scene_dir)
    garbage(scene_dir / "color" / "0.jpg")
    garbage(scene_dir / "depth" / "1.png")
    scene = ExportedScene(scene_dir)
    with pytest.raises(Exception, match="0.jpg"):
        scene.color(0)
    with pytest.raises(Exception, match="1.png"):
        scene.depth(1)


def test_truncated_sens_is_a_named_error(tiny_scannet, tmp_path):
    source = tiny_scannet / "scans" / "scene0000_00" / "scene0000_00.sens"
    data = source.read_bytes()
    truncated = tmp_path / "scene0000_00.sens"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(Exception, match="truncated"):
        SensFile(truncated).num_frames


@pytest.mark.parametrize("cloud, reason", [(np.zeros((0, 3)), "empty_cloud"),
                                           (np.array([[0.0, np.nan, 0.0]] * 5), "nonfinite_cloud")])
def test_empty_or_nan_cloud_is_a_counted_skip_reason(cloud, reason):
    assert check_cloud(cloud) == reason


def test_nan_coordinates_and_unknown_class_in_s3dis_name_the_file(tmp_path):
    bad = tmp_path / "Annotations"
    bad.mkdir()
    (bad / "chair_1.txt").write_text("1.0 2.0 0.5 10 20 30\nnan 2.0 0.5 10 20 30\n")
    with pytest.raises(Exception, match="chair_1.txt"):
        read_annotation(bad / "chair_1.txt")
    from datamodules.s3dis.raw import class_of
    with pytest.raises(Exception, match="piano_1.txt"):
        class_of(bad / "piano_1.txt")


def test_empty_inputs_are_named_errors_not_empty_datasets(tmp_path):
    from datamodules.cap3d.captions import read_captions
    from datamodules.modelnet40.resampled import read_split_ids
    from datamodules.s3dis.raw import list_rooms
    (tmp_path / "modelnet40_test.txt").write_text("\n")
    with pytest.raises(Exception, match="modelnet40_test.txt is empty"):
        read_split_ids(tmp_path, "test")
    (tmp_path / "Cap3D_automated_ABO.csv").write_text("")
    with pytest.raises(Exception, match="Cap3D_automated_ABO.csv is empty"):
        read_captions(tmp_path / "Cap3D_automated_ABO.csv")
    import h5py
    with h5py.File(tmp_path / "ply_data_train3.h5", "w") as f:
        f["data"] = np.zeros((0, 2048, 3), np.float32)
        f["label"] = np.zeros((0, 1), np.uint8)
    with pytest.raises(Exception, match=r"ply_data_train3.h5: no shapes \('data' has shape \(0, 2048, 3\)\)"):
        read_h5(tmp_path / "ply_data_train3.h5", 40)
    from datamodules.cap3d import Cap3DDataModule
    cap3d = tmp_path / "cap3d"
    (cap3d / "Cap3D_pcs_pt").mkdir(parents=True)
    torch.save(torch.rand(6, 64), cap3d / "Cap3D_pcs_pt" / "B0OTHER.pt")     # a cloud, but of no captioned object
    (cap3d / "Cap3D_automated_ABO.csv").write_text("B0CHAIR1,a red chair\nB0TABLE2,a round table\n")
    with pytest.raises(Exception, match=rf"none of the 2 objects captioned in {cap3d / 'Cap3D_automated_ABO.csv'} "
                                        rf"has a point cloud .* in {cap3d / 'Cap3D_pcs_pt'}"):
        Cap3DDataModule(str(cap3d), subset="ABO", load_images=False).splits()
    (tmp_path / "Area_3" / ".hidden").mkdir(parents=True)
    with pytest.raises(Exception, match=f"{tmp_path / 'Area_3'} holds no rooms"):
        list_rooms(tmp_path, 3)
    (tmp_path / "door_2.txt").write_text("")
    with pytest.warns(UserWarning, match="door_2.txt: empty S3DIS annotation file"):
        assert read_annotation(tmp_path / "door_2.txt").shape == (0, 6)


def test_label_outside_the_class_list_names_the_file(tmp_path):
    import h5py
    path = tmp_path / "ply_data_test0.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((2, 16, 3), np.float32)
        f["label"] = np.array([[3], [41]], np.uint8)
    with pytest.raises(Exception, match="ply_data_test0.h5"):
        read_h5(path, 40)


def test_missing_split_file_and_mismatched_checkpoint_are_named(tmp_path):
    with pytest.raises(Exception, match="scannetv2_val.txt"):
        read_split(tmp_path / "scannetv2_val.txt")
    net = torch.nn.Linear(3, 4)
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(5, 3), "net.bias": torch.zeros(4)}}, ckpt)
    with pytest.raises(Exception, match="net.weight"):
        load_pretrained_weights(net, ckpt, prefix="net.")
