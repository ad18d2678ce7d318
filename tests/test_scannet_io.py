"""ScanNet readers (.sens, exported frames), label tables and the synthetic-scan generator, on tiny scenes."""

import io
import multiprocessing
import os
import pickle
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from datamodules.scannet.meta import (CLASS_LABELS, NYU40_CLASSES, NYU40_PALETTE, VALID_CLASS_IDS, ScanNetFormatError,
                                      nyu40_to_benchmark, read_split)
from datamodules.scannet.scene import ExportedScene, SensScene, open_scene, pose_is_valid
from datamodules.scannet.sens import SensFile, SensFormatError, write_sens
from datamodules.synthetic.scannet import (DEPTH_FX_640, camera_path, generate_scannet, main, make_room, pinhole,
                                           render, room_mesh, scene_rng)

SEED, FRAMES, COLOR, DEPTH = 3, 3, (64, 48), (32, 24)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("scannet")
    names = generate_scannet(out, num_scenes=2, frames_per_scene=FRAMES, color_size=COLOR, depth_size=DEPTH,
                             seed=SEED, mesh_spacing=0.2)
    assert names == ["scene0000_00", "scene0001_00"]
    return out


@pytest.fixture
def scene_copy(root, tmp_path):
    """A writable copy of scene0000_00."""
    dst = tmp_path / "scene0000_00"
    shutil.copytree(root / "scans" / "scene0000_00", dst)
    return dst


def _sens_header_offsets(path):
    """Byte offsets (version, colour compression) read with struct, independently of SensFile."""
    with open(path, "rb") as f:
        f.seek(4)
        (name_len,) = struct.unpack("<Q", f.read(8))
    return 0, 12 + name_len + 4 * 64


def _distance_to_box_surfaces(points, boxes):
    """[N] distance of world points [N, 3] to the nearest face of any axis-aligned box (slow, obvious)."""
    dist = np.full(len(points), np.inf)
    for b in boxes:
        outside = np.linalg.norm(np.maximum(np.maximum(b.lo - points, 0.0), points - b.hi), axis=1)
        inside = np.minimum(points - b.lo, b.hi - points).min(axis=1)
        dist = np.minimum(dist, np.where(outside > 0, outside, np.abs(inside)))
    return dist


def test_sens_and_exported_readers_agree(root):
    for name in ("scene0000_00", "scene0001_00"):
        scan = root / "scans" / name
        exported, sens = open_scene(scan, "exported"), open_scene(scan, "sens")
        assert isinstance(exported, ExportedScene) and isinstance(sens, SensScene)
        assert exported.name == sens.name == name
        assert exported.frame_ids == sens.frame_ids == list(range(FRAMES))
        # text files hold the float32 .sens values with 9 significant digits: identical in float32
        for k in ("intrinsic_color", "intrinsic_depth"):
            a, b = getattr(exported, k), getattr(sens, k)
            assert a.shape == b.shape == (4, 4) and a.dtype == b.dtype == np.float64
            np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32))
        for i in exported.frame_ids:
            np.testing.assert_array_equal(exported.pose(i).astype(np.float32), sens.pose(i).astype(np.float32))
            d_e, d_s = exported.depth(i), sens.depth(i)
            assert d_e.dtype == d_s.dtype == np.float32 and d_e.shape == (DEPTH[1], DEPTH[0])
            np.testing.assert_array_equal(d_e, d_s)
            c_e, c_s = exported.color(i), sens.color(i)
            assert c_e.dtype == np.uint8 and c_e.shape == (COLOR[1], COLOR[0], 3)
            np.testing.assert_array_equal(c_e, c_s)  # same JPEG bytes in both
            assert (scan / "color" / f"{i}.jpg").read_bytes() == sens.sens.color_bytes(i)
            assert c_e.std() > 5  # textured, not flat
            with Image.open(scan / "depth" / f"{i}.png") as im:
                assert im.mode == "I;16"


def test_sens_roundtrip_and_byte_layout(tmp_path):
    rng = np.random.default_rng(0)
    n, (w, h), (dw, dh) = 4, (40, 30), (20, 15)
    colors = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    depths = [rng.integers(0, 65536, (dh, dw), dtype=np.uint16) for _ in range(n)]
    poses = rng.normal(size=(n, 4, 4)).astype(np.float32)
    poses[2] = -np.inf  # ScanNet has frames with all -inf poses
    k_color = np.array([[30.5, 0, 19.5, 0], [0, 30.25, 14.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    k_depth = np.array([[15.125, 0, 9.5, 0], [0, 15.0, 7, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    path = str(tmp_path / "x.sens")
    write_sens(path, k_color, k_depth, colors, depths, poses, jpeg_quality=90)
    assert os.listdir(tmp_path) == ["x.sens"]
    sf = SensFile(path)
    assert sf.num_frames == len(sf) == n and sf.color_size == (w, h) and sf.depth_size == (dw, dh)
    assert sf.depth_shift == 1000.0
    np.testing.assert_array_equal(sf.intrinsic_color, k_color)
    np.testing.assert_array_equal(sf.intrinsic_depth, k_depth)
    for i in range(n):
        np.testing.assert_array_equal(sf.pose(i), poses[i].astype(np.float64))
        np.testing.assert_array_equal(sf.depth_mm(i), depths[i])
        np.testing.assert_array_equal(sf.depth(i), depths[i].astype(np.float32) / np.float32(1000))
        buf = io.BytesIO()
        Image.fromarray(colors[i]).save(buf, format="JPEG", quality=90)
        assert sf.color_bytes(i) == buf.getvalue()
        np.testing.assert_array_equal(sf.color(i), np.asarray(Image.open(buf).convert("RGB")))
    assert not pose_is_valid(sf.pose(2))
    # independent parse of the documented layout
    raw = open(path, "rb").read()
    version, name_len = struct.unpack_from("<IQ", raw, 0)
    pos = 12 + name_len
    mats = np.array(struct.unpack_from("<64f", raw, pos)).reshape(4, 4, 4)
    np.testing.assert_array_equal(mats[0], k_color)
    np.testing.assert_array_equal(mats[1], np.eye(4))
    np.testing.assert_array_equal(mats[2], k_depth)
    c_comp, d_comp, cw, ch, dw_, dh_, shift, num = struct.unpack_from("<iiIIIIfQ", raw, pos + 256)
    assert (version, c_comp, d_comp, cw, ch, dw_, dh_, shift, num) == (4, 2, 1, w, h, dw, dh, 1000.0, n)
    pos += 256 + 36
    for i in range(n):
        frame = struct.unpack_from("<16f4Q", raw, pos)
        np.testing.assert_array_equal(np.array(frame[:16]).reshape(4, 4), poses[i])
        color_len, depth_len = frame[18], frame[19]
        start = pos + 96 + color_len
        assert zlib.decompress(raw[start:start + depth_len]) == depths[i].astype("<u2").tobytes()
        pos = start + depth_len
    assert len(raw) == pos + 8 and struct.unpack_from("<Q", raw, pos) == (0,)  # IMU count


def test_write_sens_failure_leaves_no_file(tmp_path):
    colors = [np.zeros((8, 8, 3), np.uint8)] * 2
    depths = [np.zeros((4, 4), np.uint16), np.zeros((4, 5), np.uint16)]
    with pytest.raises(ValueError, match="frame 1"):
        write_sens(tmp_path / "bad.sens", np.eye(4), np.eye(4), colors, depths, np.tile(np.eye(4), (2, 1, 1)))
    assert os.listdir(tmp_path) == []


def test_rendered_depth_lies_on_room_surfaces(root):
    """Back-project depth with the written intrinsics and pose (PointContrast formula): every point must lie
    on a face of one of the room's boxes. Checks intrinsics, pose convention and depth units together."""
    for s, name in enumerate(("scene0000_00", "scene0001_00")):
        room = make_room(scene_rng(SEED, s))
        scene = open_scene(root / "scans" / name)
        assert isinstance(scene, ExportedScene)
        k = scene.intrinsic_depth
        for i in scene.frame_ids:
            depth = scene.depth(i)
            assert (depth > 0).all() and depth.max() < 10  # closed room, no misses
            v, u = np.nonzero(depth > 0)
            z = depth[v, u].astype(np.float64)
            cam = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z, np.ones_like(z)], 1)
            pose = scene.pose(i)
            assert pose_is_valid(pose)
            world = (cam @ pose.T)[:, :3]
            assert _distance_to_box_surfaces(world, room.boxes).max() < 0.01
            assert world[:, 2].min() > -0.01  # nothing below the floor
            # negative control: a y-up camera convention puts points off the surfaces
            flipped = (cam * [1, -1, 1, 1]) @ pose.T
            assert _distance_to_box_surfaces(flipped[:, :3], room.boxes).max() > 0.05


def test_truncated_sens_names_file_and_frame(scene_copy):
    path = scene_copy / "scene0000_00.sens"
    raw = path.read_bytes()
    sf = SensFile(path)
    last_color_offset = sf._offsets[-1][0]
    path.write_bytes(raw[:last_color_offset + 10])
    with pytest.raises(SensFormatError, match=rf"{path} is truncated: frame {FRAMES - 1} of {FRAMES} needs bytes"):
        SensFile(path)
    path.write_bytes(raw[:20])
    with pytest.raises(SensFormatError, match="is truncated"):
        SensFile(path)


@pytest.mark.parametrize("field,value,message", [("version", 3, "unsupported .sens version 3"),
                                                  ("color", 7, "unsupported colour compression type 7"),
                                                  ("depth", 2, "unsupported depth compression type 2")])
def test_bad_header_fields(scene_copy, field, value, message):
    path = scene_copy / "scene0000_00.sens"
    raw = bytearray(path.read_bytes())
    version_at, color_at = _sens_header_offsets(path)
    at = {"version": version_at, "color": color_at, "depth": color_at + 4}[field]
    raw[at:at + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(raw))
    with pytest.raises(SensFormatError, match=message) as err:
        SensFile(path)
    assert str(path) in str(err.value)


def test_corrupt_jpeg_names_file(scene_copy):
    sens_path = scene_copy / "scene0000_00.sens"
    sf = SensFile(sens_path)
    offset, size, _, _ = sf._offsets[1]
    raw = bytearray(sens_path.read_bytes())
    raw[offset + 2:offset + size] = bytes(size - 2)  # keep the JPEG SOI marker, zero the rest
    sens_path.write_bytes(bytes(raw))
    sf = SensFile(sens_path)
    sf.color(0)
    with pytest.raises(SensFormatError, match=rf"{sens_path}: frame 1: cannot decode jpeg"):
        sf.color(1)
    jpg = scene_copy / "color" / "1.jpg"
    jpg.write_bytes(jpg.read_bytes()[:40])
    scene = ExportedScene(scene_copy)
    with pytest.raises(ScanNetFormatError, match=rf"{jpg}: cannot decode colour image"):
        scene.color(1)
    Image.fromarray(np.zeros((DEPTH[1], DEPTH[0]), np.uint8)).save(scene_copy / "depth" / "2.png")
    with pytest.raises(ScanNetFormatError, match="16-bit"):
        scene.depth(2)


def test_missing_frame_files_name_the_path(scene_copy):
    os.remove(scene_copy / "color" / "1.jpg")
    with pytest.raises(ScanNetFormatError, match=r"1 frame file\(s\) missing") as err:
        ExportedScene(scene_copy)
    assert str(scene_copy / "color" / "1.jpg") in str(err.value)
    os.remove(scene_copy / "depth" / "2.png")
    with pytest.raises(ScanNetFormatError, match=r"2 frame file\(s\) missing"):
        ExportedScene(scene_copy)
    os.remove(scene_copy / "intrinsic" / "intrinsic_depth.txt")
    with pytest.raises(ScanNetFormatError, match="intrinsic_depth.txt: file not found"):
        ExportedScene(scene_copy)


def test_nan_pose_is_returned_and_flagged(scene_copy):
    np.savetxt(scene_copy / "pose" / "1.txt", np.full((4, 4), np.nan))
    (scene_copy / "pose" / "2.txt").write_text("-inf -inf -inf -inf\n" * 4)
    scene = ExportedScene(scene_copy)
    assert np.isnan(scene.pose(1)).all() and np.isneginf(scene.pose(2)).all()
    assert pose_is_valid(scene.pose(0))
    assert not pose_is_valid(scene.pose(1)) and not pose_is_valid(scene.pose(2))
    bad_row = np.eye(4)
    bad_row[3, 0] = 1e-3
    assert not pose_is_valid(bad_row) and pose_is_valid(np.eye(4) + 5e-5)
    (scene_copy / "pose" / "0.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ScanNetFormatError, match="0.txt: expected a 4x4 matrix"):
        scene.pose(0)


def test_open_scene_sources_png_colour_and_numeric_ids(scene_copy):
    for old, new in ((2, 100), (1, 25)):
        for sub, ext in (("color", ".jpg"), ("depth", ".png"), ("pose", ".txt")):
            os.rename(scene_copy / sub / f"{old}{ext}", scene_copy / sub / f"{new}{ext}")
    jpg = scene_copy / "color" / "25.jpg"
    Image.open(jpg).save(scene_copy / "color" / "25.png")
    expected = np.asarray(Image.open(jpg).convert("RGB"))
    os.remove(jpg)
    scene = open_scene(scene_copy)
    assert isinstance(scene, ExportedScene) and scene.frame_ids == [0, 25, 100]
    np.testing.assert_array_equal(scene.color(25), expected)
    shutil.rmtree(scene_copy / "pose")
    assert isinstance(open_scene(scene_copy), SensScene)
    os.remove(scene_copy / "scene0000_00.sens")
    with pytest.raises(ScanNetFormatError, match=rf"{scene_copy}: no ScanNet frames found"):
        open_scene(scene_copy)
    with pytest.raises(ScanNetFormatError, match="scene0000_00.sens: .sens file not found"):
        open_scene(scene_copy, source="sens")


def test_sens_file_survives_pickle_and_fork(root):
    sf = SensFile(root / "scans" / "scene0001_00" / "scene0001_00.sens")
    expected = [sf.depth(i) for i in range(FRAMES)]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(sf))
    assert clone._fh is None
    np.testing.assert_array_equal(clone.depth(1), expected[1])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        depths = pool.map(sf.depth, range(FRAMES))
    for a, b in zip(depths, expected):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError, match="frame 3 out of range"):
        sf.pose(FRAMES)


def test_splits_and_scene_meta(root, tmp_path):
    assert read_split(root / "scannetv2_train.txt") == ["scene0000_00"]
    assert read_split(root / "scannetv2_val.txt") == ["scene0001_00"]
    missing = tmp_path / "scannetv2_test.txt"
    with pytest.raises(ScanNetFormatError, match=rf"{missing}: split file not found.*Tasks/Benchmark"):
        read_split(missing)
    missing.write_text("\n")
    with pytest.raises(ScanNetFormatError, match="split file is empty"):
        read_split(missing)
    missing.write_text("scene0001_00\nscene01\n")
    with pytest.raises(ScanNetFormatError, match=":2: expected a scene id"):
        read_split(missing)
    meta = {}
    for line in (root / "scans" / "scene0000_00" / "scene0000_00.txt").read_text().splitlines():
        key, value = line.split(" = ")
        meta[key] = value
    assert list(meta) == sorted(meta)
    np.testing.assert_array_equal(np.array(meta["axisAlignment"].split(), float), np.eye(4).ravel())
    assert (int(meta["colorWidth"]), int(meta["colorHeight"])) == COLOR
    assert (int(meta["depthWidth"]), int(meta["depthHeight"])) == DEPTH
    k = open_scene(root / "scans" / "scene0000_00").intrinsic_depth
    assert float(meta["fx_depth"]) == pytest.approx(k[0, 0], abs=1e-6)
    assert float(meta["mx_depth"]) == (DEPTH[0] - 1) / 2
    assert k[0, 0] == pytest.approx(577.870605 * DEPTH[0] / 640, rel=1e-6)


def test_label_tables():
    assert len(VALID_CLASS_IDS) == len(CLASS_LABELS) == 20 and len(NYU40_CLASSES) == 40
    for nyu, name in zip(VALID_CLASS_IDS, CLASS_LABELS):
        assert NYU40_CLASSES[nyu] == name or (nyu, name) == (24, "refrigerator")
    assert len(NYU40_PALETTE) == 41 and NYU40_PALETTE[1] == (174, 199, 232)
    ids = np.array([[0, 1, 2], [13, 39, 40]])
    expected = np.array([[-1, 0, 1], [-1, 19, -1]])
    np.testing.assert_array_equal(nyu40_to_benchmark(ids), expected)
    np.testing.assert_array_equal(nyu40_to_benchmark(np.array([24, 99]), ignore_index=255), [14, 255])


def test_ply_meshes(root):
    room = make_room(scene_rng(SEED, 0))
    scan = root / "scans" / "scene0000_00"
    mesh = PlyData.read(str(scan / "scene0000_00_vh_clean_2.ply"))
    labels = PlyData.read(str(scan / "scene0000_00_vh_clean_2.labels.ply"))
    assert mesh.header.startswith("ply\nformat binary_little_endian 1.0")
    names = ["x", "y", "z", "red", "green", "blue", "alpha"]
    types = ["f4", "f4", "f4", "u1", "u1", "u1", "u1"]
    assert [(p.name, p.val_dtype) for p in mesh["vertex"].properties] == list(zip(names, types))
    assert [(p.name, p.val_dtype) for p in labels["vertex"].properties] == list(zip(names + ["label"],
                                                                                    types + ["u2"]))
    assert "property ushort label\n" in labels.header and "property uchar alpha\n" in mesh.header
    for ply in (mesh, labels):
        face = ply["face"].properties[0]
        assert (face.name, face.len_dtype, face.val_dtype) == ("vertex_indices", "u1", "i4")
        assert "property list uchar int vertex_indices\n" in ply.header
    v, lv = mesh["vertex"].data, labels["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
    np.testing.assert_array_equal(xyz, np.stack([lv["x"], lv["y"], lv["z"]], 1))
    assert np.unique(v["alpha"]).size == 1
    faces = np.stack(mesh["face"].data["vertex_indices"])
    assert faces.shape[1] == 3 and faces.min() >= 0 and faces.max() < len(v)
    label = lv["label"]
    assert set(np.unique(label)) == {b.label for b in room.boxes}
    assert {1, 2} <= set(np.unique(label)) and 3 <= len(room.boxes) - 5 <= 6
    palette = np.array(NYU40_PALETTE)[label]
    np.testing.assert_array_equal(np.stack([lv["red"], lv["green"], lv["blue"]], 1), palette)
    assert _distance_to_box_surfaces(xyz, room.boxes).max() < 1e-5
    # triangles are wound so their normals point into the free space (towards the camera)
    tri = xyz[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    probe = tri.mean(1) + 0.01 * normals / np.linalg.norm(normals, axis=1, keepdims=True)
    size = room.size
    in_room = ((probe > 0) & (probe < size)).all(1)
    in_furniture = np.zeros(len(probe), bool)
    for b in room.boxes[5:]:
        in_furniture |= ((probe > b.lo) & (probe < b.hi)).all(1)
    assert in_room.all() and not in_furniture.any()


def test_generator_is_deterministic_and_cli_writes_layout(tmp_path):
    kwargs = dict(num_scenes=1, frames_per_scene=2, color_size=(32, 24), depth_size=(16, 12), mesh_spacing=0.5)
    generate_scannet(tmp_path / "a", seed=7, write_exported=False, **kwargs)
    generate_scannet(tmp_path / "b", seed=7, write_exported=False, **kwargs)
    generate_scannet(tmp_path / "c", seed=8, write_exported=False, **kwargs)
    sens = [(tmp_path / r / "scans/scene0000_00/scene0000_00.sens").read_bytes() for r in "abc"]
    assert sens[0] == sens[1] and sens[0] != sens[2]
    assert not (tmp_path / "a/scans/scene0000_00/color").exists()
    main(["--out", str(tmp_path / "cli"), "--scenes", "2", "--frames", "2", "--color-size", "32", "24",
          "--depth-size", "16", "12", "--no-sens", "--mesh-spacing", "0.5"])
    scan = tmp_path / "cli/scans/scene0001_00"
    assert not (scan / "scene0001_00.sens").exists()
    for rel in ("color/1.jpg", "depth/1.png", "pose/1.txt", "intrinsic/intrinsic_color.txt",
                "intrinsic/intrinsic_depth.txt", "scene0001_00_vh_clean_2.ply",
                "scene0001_00_vh_clean_2.labels.ply", "scene0001_00.txt"):
        assert (scan / rel).is_file(), rel
    assert read_split(tmp_path / "cli/scannetv2_val.txt") == ["scene0001_00"]


def test_mesh_vertex_colours_match_rendered_pixels():
    """2D-3D consistency: a visible mesh vertex projects onto a pixel of (nearly) its own colour."""
    rng = scene_rng(0, 0)
    room = make_room(rng)
    pose = camera_path(room, 1, rng)[0]
    size = (160, 120)
    k = pinhole(size, DEPTH_FX_640, 640)
    rgb, depth = render(room, k, pose, size)
    verts, _, _, colors = room_mesh(room, spacing=0.1)
    cam = (verts.astype(np.float64) - pose[:3, 3]) @ pose[:3, :3]  # world -> camera: R^T (x - t)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(k[0, 0] * cam[:, 0] / z + k[0, 2]).astype(np.int64)
        v = np.round(k[1, 1] * cam[:, 1] / z + k[1, 2]).astype(np.int64)
    inside = (z > 0.1) & (u >= 0) & (u < size[0]) & (v >= 0) & (v < size[1])
    u, v, z, colors = u[inside], v[inside], z[inside], colors[inside].astype(int)
    visible = np.abs(depth[v, u] / 1000.0 - z) < 0.02
    assert visible.sum() > 200
    diff = np.abs(rgb[v, u].astype(int) - colors).max(1)[visible]
    shuffled = np.abs(rgb[v, u].astype(int) - np.random.default_rng(0).permutation(colors)).max(1)[visible]
    assert np.median(diff) <= 3 and (diff <= 3).mean() > 0.7
    assert (shuffled <= 3).mean() < 0.3
