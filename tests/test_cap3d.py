"""Cap3D: caption CSV, clouds (.pt / .ply) and rendered views (folder / zip) read back from the synthetic
generator, the camera convention checked by back-projection, the uid-hash split, per-epoch view sampling, and
every kind of bad input."""
import io
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.cap3d import (Cap3DDataModule, Cap3DFormatError, RenderedViews, camera_matrices, composite,
                               depth_to_points, read_captions, read_point_cloud, split_of)
from datamodules.cap3d.datamodule import Cap3DObjects, index_objects
from datamodules.synthetic.cap3d import COLORS, POINT_DIR, VIEW_DIR, generate_cap3d
from datamodules.synthetic.cap3d import main as synthetic_main
from datamodules.synthetic.cap3d import png_bytes
from lang3d.data.object_samples import PointSelector

SIZE = 48


@pytest.fixture(scope="module")
def cap3d(tmp_path_factory):
    """ABO layout: 10 objects of 2048 points, 3 views of 48² each as folders; the first object's first view blank."""
    root = tmp_path_factory.mktemp("cap3d")
    return root, generate_cap3d(root, num_objects=10, views=3, image_size=SIZE, points=2048, blank_views=1, seed=0)


@pytest.fixture(scope="module")
def cap3d_zip(tmp_path_factory):
    """Objaverse layout, same seed: .ply clouds and one zip of views per object."""
    root = tmp_path_factory.mktemp("cap3d_zip")
    return root, generate_cap3d(root, num_objects=10, subset="Objaverse", views=3, image_size=SIZE, points=2048,
                                zipped=True, point_format="ply", blank_views=1, seed=0)


@pytest.fixture
def copy(cap3d, tmp_path):
    shutil.copytree(cap3d[0], tmp_path / "data")
    return tmp_path / "data", cap3d[1]


def _dm(root, tmp_path, **kw):
    args = dict(num_points=1024, image_size=(32, 40), batch_size=2, num_workers=0, cache_dir=str(tmp_path / "cache"),
                split_fractions=(0.5, 0.5), drop_last=False)
    return Cap3DDataModule(str(root), **{**args, **kw})


def test_captions_read_back_with_quoted_commas(cap3d):
    root, info = cap3d
    captions = read_captions(info["captions"])
    assert list(captions.items()) == [(o["uid"], o["caption"]) for o in info["objects"]]
    text = info["captions"].read_text()
    with_comma = [o for o in info["objects"] if "," in o["caption"]]
    assert with_comma and all(f'{o["uid"]},"{o["caption"]}"' in text for o in with_comma)
    assert not text.startswith("uid")  # no header


@pytest.mark.parametrize("content,message", [
    ('a1,"a red cube"\nb2,two,fields\n', r"row 2 \(line 2\): 3 fields, expected 2"),
    ('a1,"a red\ncube"\n\nb2,\n', r"row 2 \(line 4\): empty caption"),
    ('a1,a cube\na1,a cone\n', r"row 2 \(line 2\): uid a1 repeats row 1"),
    ('../x,a cube\n', r"row 1 \(line 1\): uid '../x' is not a plain file name"),
    ('a1,"a cube\n', r"row 1 \(line 1\):.*"),
])
def test_malformed_caption_rows_name_file_and_row(tmp_path, content, message):
    path = tmp_path / "captions.csv"
    path.write_text(content)
    with pytest.raises(Cap3DFormatError, match=rf"{path} {message}"):
        read_captions(path)


def test_point_clouds_read_back_in_both_formats(cap3d, cap3d_zip):
    for (root, info), suffix in ((cap3d, "pt"), (cap3d_zip, "ply")):
        for obj in info["objects"]:
            xyz, rgb = read_point_cloud(root / POINT_DIR / f"{obj['uid']}.{suffix}")
            assert xyz.shape == rgb.shape == (2048, 3) and xyz.dtype == rgb.dtype == np.float32
            assert np.abs(xyz).max() <= 0.5 + 1e-6 and np.abs(xyz).max(0).max() == pytest.approx(0.5, abs=1e-6)
            bottom = xyz[:, 2] <= 0  # the caption's colour below mid-height, the top colour above
            assert (rgb[bottom] == COLORS[obj["color"]]).all() and (rgb[~bottom] == COLORS[obj["top_color"]]).all()
    uid = cap3d[1]["objects"][0]["uid"]
    raw = torch.load(cap3d[0] / POINT_DIR / f"{uid}.pt", weights_only=True)
    assert raw.shape == (6, 2048) and raw.dtype == torch.float32 and 0 <= raw[3:].min() and raw[3:].max() <= 255
    header = (cap3d_zip[0] / POINT_DIR / f"{cap3d_zip[1]['objects'][0]['uid']}.ply").read_bytes()[:400]
    assert b"format binary_little_endian 1.0" in header and b"property float x" in header
    assert b"property uchar red" in header and b"face" not in header
    # same seed, same objects: the two layouts hold the same clouds
    xyz_pt, _ = read_point_cloud(cap3d[0] / POINT_DIR / f"{uid}.pt")
    xyz_ply, _ = read_point_cloud(cap3d_zip[0] / POINT_DIR / f"{cap3d_zip[1]['objects'][0]['uid']}.ply")
    np.testing.assert_array_equal(xyz_pt, xyz_ply)


def test_views_in_folders_and_zips_read_the_same(cap3d, cap3d_zip):
    for a, b in zip(cap3d[1]["objects"], cap3d_zip[1]["objects"]):
        folder = RenderedViews(cap3d[0] / VIEW_DIR / a["uid"])
        archive = RenderedViews(cap3d_zip[0] / VIEW_DIR / f"{b['uid']}.zip")
        assert folder.views == archive.views == ["00000", "00001", "00002"]
        for view in folder.views:
            assert np.array_equal(folder.rgba(view), archive.rgba(view))
            assert np.array_equal(folder.depth(view), archive.depth(view))
    assert cap3d[1]["blank"] == [(cap3d[1]["objects"][0]["uid"], "00000")]
    views = RenderedViews(cap3d[0] / VIEW_DIR / cap3d[1]["objects"][0]["uid"])
    assert views.is_blank("00000") and not views.is_blank("00001")


def test_png_writer_round_trips_16_bit_through_pillow():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    depth = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(rgba))).convert("RGBA"))
    assert np.array_equal(decoded, (rgba >> 8).astype(np.uint8))  # Pillow keeps the high byte of 16-bit colour
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(depth)))), depth)


def _project(xyz, camera, size):
    """Documented convention, written out: camera coords R^T (p - origin) with R = [x y z] columns,
    u = fx X/Z + W/2 with fx = (W/2)/tan(x_fov/2) (likewise v); returns (row, col, Z) of the points in view."""
    rot = np.array([camera["x"], camera["y"], camera["z"]]).T
    cam = (xyz - np.array(camera["origin"])) @ rot
    fx, fy = size / 2 / np.tan(camera["x_fov"] / 2), size / 2 / np.tan(camera["y_fov"] / 2)
    col = np.floor(fx * cam[:, 0] / cam[:, 2] + size / 2).astype(int)
    row = np.floor(fy * cam[:, 1] / cam[:, 2] + size / 2).astype(int)
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (cam[:, 2] > 0)
    return row[inside], col[inside], cam[inside, 2]


def _consistent(xyz, camera, depth):
    """Whether ``depth`` can be the z-buffer of ``xyz`` seen by ``camera``: every point lands on a drawn pixel no
    farther than itself, and every drawn depth is the depth of a point projecting at most 2 pixels away."""
    size = len(depth)
    quantum = camera["max_depth"] / 65535
    metres = depth.astype(np.float64) / 65535 * camera["max_depth"]
    row, col, z = _project(xyz, camera, size)
    if len(z) < len(xyz) or (metres[row, col] > z + quantum).any():
        return False
    gap = np.full((size, size), np.inf)
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            r, c = np.clip(row + dr, 0, size - 1), np.clip(col + dc, 0, size - 1)
            np.minimum.at(gap, (r, c), np.abs(metres[r, c] - z))
    return bool((gap[depth != 65535] <= quantum).all())


def test_camera_json_and_depth_follow_the_documented_convention(tmp_path):
    """The renders are z-buffers of the cloud under the documented camera model (and not under a 5 % different
    focal length or a camera rolled by 180 degrees); back-projection inverts the projection."""
    size = 128
    info = generate_cap3d(tmp_path, num_objects=2, views=2, image_size=size, points=16384, seed=1)
    for obj in info["objects"]:
        xyz, _ = read_point_cloud(tmp_path / POINT_DIR / f"{obj['uid']}.pt")
        views = RenderedViews(tmp_path / VIEW_DIR / obj["uid"])
        for view in views.views:
            camera, depth, rgba = views.camera(view), views.depth(view), views.rgba(view)
            assert set(camera) >= {"format_version", "max_depth", "bbox", "origin", "x_fov", "y_fov", "x", "y", "z"}
            assert _consistent(xyz, camera, depth)
            assert not _consistent(xyz, {**camera, "x_fov": camera["x_fov"] * 0.95,
                                         "y_fov": camera["y_fov"] * 0.95}, depth)
            assert not _consistent(xyz, {**camera, "x": [-v for v in camera["x"]],
                                         "y": [-v for v in camera["y"]]}, depth)
            assert ((rgba[..., 3] == 255) == (depth != 65535)).all()
            points, pixels = depth_to_points(depth, camera)
            intrinsics, c2w = camera_matrices(camera, size, size)
            np.testing.assert_allclose(c2w[:3, :3].T @ c2w[:3, :3], np.eye(3), atol=1e-9)  # a rotation
            cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
            metres = depth[pixels[:, 0], pixels[:, 1]] / 65535 * camera["max_depth"]
            np.testing.assert_allclose(cam[:, 2], metres, atol=1e-9)
            np.testing.assert_allclose(intrinsics[0, 0] * cam[:, 0] / cam[:, 2] + size / 2, pixels[:, 1] + 0.5,
                                       atol=1e-6)
            np.testing.assert_allclose(intrinsics[1, 1] * cam[:, 1] / cam[:, 2] + size / 2, pixels[:, 0] + 0.5,
                                       atol=1e-6)


def test_split_by_uid_hash_is_deterministic_and_follows_the_fractions():
    uids = [f"{i:032x}" for i in range(20000)]
    splits = [split_of(u, (0.9, 0.1)) for u in uids]
    assert [split_of(u, (0.9, 0.1)) for u in reversed(uids)] == splits[::-1]
    assert abs(splits.count(0) / len(uids) - 0.9) < 0.01
    three = np.bincount([split_of(u, (0.8, 0.1, 0.1)) for u in uids], minlength=3) / len(uids)
    np.testing.assert_allclose(three, [0.8, 0.1, 0.1], atol=0.01)
    with pytest.raises(ValueError, match="summing to 1"):
        Cap3DDataModule("/nowhere", split_fractions=(0.9, 0.2))


def test_datamodule_serves_triplets(cap3d, tmp_path):
    root, info = cap3d
    dm = _dm(root, tmp_path, normalize=True)
    dm.prepare_data()
    dm.setup("fit")
    by_uid = {o["uid"]: o for o in info["objects"]}
    for name, ds in dm.datasets.items():
        assert all(split_of(o.uid, (0.5, 0.5)) == ("train", "val").index(name) for o in ds.objects)
    assert sorted(o.uid for ds in dm.datasets.values() for o in ds.objects) == sorted(by_uid)
    batches = list(dm.val_dataloader())
    batch = batches[0]
    assert batch["points"].shape == (2, 1024, 3) and batch["colors"].shape == (2, 1024, 3)
    assert batch["image"].shape == (2, 32, 40, 3) and batch["image"].dtype == torch.uint8
    assert batch["caption"] == [by_uid[u]["caption"] for u in batch["uid"]]
    assert torch.allclose(batch["points"].norm(dim=-1).amax(1), torch.ones(2), atol=1e-6)
    assert torch.allclose(batch["points"].mean(1), torch.zeros(2, 3), atol=1e-6)
    xyz, rgb = read_point_cloud(root / POINT_DIR / f"{batch['uid'][0]}.pt")
    idx = np.load(dm.cache_root / f"{batch['uid'][0]}.npy").astype(np.int64)  # filled by prepare_data
    assert len(set(idx.tolist())) == 1024
    np.testing.assert_allclose(batch["colors"][0].numpy(), rgb[idx] / 255, atol=1e-6)
    views = RenderedViews(root / VIEW_DIR / batch["uid"][0])
    expected = Image.fromarray(composite(views.rgba(batch["view"][0]))).resize((40, 32), Image.BICUBIC)
    assert np.array_equal(batch["image"][0].numpy(), np.asarray(expected))
    assert all(not views.is_blank(v) for b in batches for v in b["view"] if b["uid"] == batch["uid"][0])


def test_views_change_with_the_epoch_and_blank_views_are_passed_over_and_counted(cap3d, tmp_path):
    root, info = cap3d
    dm = _dm(root, tmp_path, split_fractions=(1.0, 0.0), batch_size=10)
    loader = dm.train_dataloader()

    def epoch(e):
        loader.sampler.set_epoch(e)
        batch = next(iter(loader))
        return dict(zip(batch["uid"], batch["view"])), batch["skipped"]

    draws = [epoch(e) for e in range(6)]
    assert epoch(3) == draws[3]  # reproducible
    assert len({tuple(sorted(d.items())) for d, _ in draws}) > 1  # and changes with the epoch
    blank_uid = info["objects"][0]["uid"]
    assert all(d[blank_uid] != "00000" for d, _ in draws)
    counted = [s["blank_view"] for _, s in draws]
    assert any(counted) and set(counted) <= {0, 1}
    dataset = dm.datasets["train"]
    i = [o.uid for o in dataset.objects].index(blank_uid)
    for e in range(6):  # independent re-draw: the blank view is counted exactly when it comes first
        dataset.set_epoch(e)
        first = np.random.default_rng([0, e, i]).permutation(3)[0]
        assert dataset[i].get("skip_counts", {}).get("blank_view", 0) == int(first == 0)


def test_all_blank_views_skip_the_object(copy, tmp_path):
    root, info = copy
    uid = info["objects"][2]["uid"]
    for view in ("00000", "00001", "00002"):
        (root / VIEW_DIR / uid / f"{view}_depth.png").write_bytes(png_bytes(np.full((SIZE, SIZE), 65535, np.uint16)))
    objects, _ = index_objects(read_captions(info["captions"]), root / POINT_DIR, root / VIEW_DIR)
    dataset = Cap3DObjects(objects, PointSelector(2048))
    assert dataset[2] == {"uid": uid, "skipped": "all_views_blank"}


def test_missing_and_bad_object_files(copy, tmp_path):
    root, info = copy
    uids = [o["uid"] for o in info["objects"]]
    (root / POINT_DIR / f"{uids[3]}.pt").unlink()
    dm = _dm(root, tmp_path, split_fractions=(1.0, 0.0), batch_size=10)
    with pytest.warns(UserWarning, match=rf"1 of 10 captioned objects have no point cloud .*e\.g\. {uids[3]}"):
        dm.setup("fit")
    assert dm.skipped == {"missing_point_cloud": 1} and len(dm.datasets["train"]) == 9
    torch.save(torch.zeros(6, 0), root / POINT_DIR / f"{uids[4]}.pt")
    nan = torch.rand(6, 2048)
    nan[1, 5] = float("nan")
    torch.save(nan, root / POINT_DIR / f"{uids[5]}.pt")
    batch = next(iter(dm.train_dataloader()))
    assert batch["skipped"]["empty_cloud"] == 1 and batch["skipped"]["nonfinite_cloud"] == 1
    assert len(batch["uid"]) == 7 and uids[4] not in batch["uid"]
    torch.save(torch.zeros(3, 2048), root / POINT_DIR / f"{uids[4]}.pt")
    with pytest.raises(Cap3DFormatError, match=rf"{uids[4]}\.pt: expected a tensor \[6,P\].*\(3, 2048\)"):
        read_point_cloud(root / POINT_DIR / f"{uids[4]}.pt")
    (root / VIEW_DIR / uids[6] / "00001_depth.png").unlink()
    dataset = dm.datasets["train"]
    i = [o.uid for o in dataset.objects].index(uids[6])
    with pytest.raises(FileNotFoundError, match=rf"{uids[6]}: view file 00001_depth.png is missing"):
        for e in range(10):  # some epoch draws view 00001
            dataset.set_epoch(e)
            dataset[i]
    shutil.rmtree(root / VIEW_DIR / uids[7])
    with pytest.raises(FileNotFoundError, match=rf"{uids[7]} .* has no rendered views: neither .*{uids[7]}/ nor "
                                                rf".*{uids[7]}\.zip exists"):
        _dm(root, tmp_path).setup("fit")
    with pytest.warns(UserWarning, match="no point cloud"):
        assert len(_dm(root, tmp_path, load_images=False, split_fractions=(1.0, 0.0)).splits()["train"]) == 9


def test_missing_member_of_a_view_zip_is_named(cap3d_zip, tmp_path):
    root, info = cap3d_zip
    uid = info["objects"][1]["uid"]
    broken = tmp_path / f"{uid}.zip"
    with zipfile.ZipFile(root / VIEW_DIR / f"{uid}.zip") as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            if name != "00002.json":
                dst.writestr(f"{uid}/{name}", src.read(name))  # members under a folder are found too
    views = RenderedViews(broken)
    assert views.views == ["00000", "00001", "00002"] and views.depth("00002").shape == (SIZE, SIZE)
    with pytest.raises(FileNotFoundError, match=rf"{broken}: view file 00002.json is missing"):
        views.camera("00002")
    with pytest.raises(FileNotFoundError, match="rendered views .* do not exist"):
        RenderedViews(tmp_path / "absent.zip")


def test_subset_selects_the_caption_file(cap3d, cap3d_zip, tmp_path):
    assert len(_dm(cap3d_zip[0], tmp_path, subset="Objaverse", split_fractions=(1.0, 0.0)).splits()["train"]) == 10
    with pytest.raises(FileNotFoundError, match="Cap3D_automated_ABO.csv"):
        _dm(cap3d_zip[0], tmp_path, subset="ABO").splits()
    assert all(len(o["uid"]) == 32 for o in cap3d_zip[1]["objects"])


def test_zipped_ply_layout_through_the_datamodule_and_the_cli(cap3d_zip, tmp_path):
    root, info = cap3d_zip
    dm = _dm(root, tmp_path, split_fractions=(1.0, 0.0), batch_size=10, fps_cache=False)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["uid"]) == sorted(o["uid"] for o in info["objects"])
    assert batch["image"].shape == (10, 32, 40, 3) and batch["points"].shape == (10, 1024, 3)
    synthetic_main(["--out", str(tmp_path / "cli"), "--objects", "2", "--views", "2", "--image-size", "16",
                    "--points", "300", "--zipped", "--point-format", "ply", "--subset", "Objaverse"])
    captions = read_captions(tmp_path / "cli" / "Cap3D_automated_Objaverse_full.csv")
    assert len(captions) == 2
    for uid in captions:
        assert read_point_cloud(tmp_path / "cli" / POINT_DIR / f"{uid}.ply")[0].shape == (300, 3)
        assert RenderedViews(tmp_path / "cli" / VIEW_DIR / f"{uid}.zip").views == ["00000", "00001"]


def test_builtin_root_is_generated_but_a_missing_user_root_is_an_error(tmp_path):
    import datamodules.cap3d.datamodule as cap3d_dm

    dm = cap3d_dm.Cap3DDataModule(str(tmp_path / "builtin"), subset="ABO", num_points=64, batch_size=2,
                                  num_workers=0, image_size=(32, 32), write_builtin_data=True)
    dm.prepare_data()
    assert (tmp_path / "builtin" / "Cap3D_automated_ABO.csv").is_file()
    missing = cap3d_dm.Cap3DDataModule(str(tmp_path / "mine"), subset="ABO", num_points=64, num_workers=0)
    with pytest.raises(FileNotFoundError, match="mine"):
        missing.prepare_data()


def test_clouds_are_served_in_cap3ds_own_units_by_default(cap3d, tmp_path):
    """Cap3D's clouds are already in Point-E's units: served unchanged (no re-centring, no rescaling) unless
    ``normalize``; the same points, in the same order, either way."""
    root, _ = cap3d
    raw = _dm(root, tmp_path, split_fractions=(1.0, 0.0), batch_size=10)
    raw.setup("fit")
    batch = next(iter(raw.train_dataloader()))
    for uid, points in zip(batch["uid"], batch["points"]):
        xyz, _ = read_point_cloud(root / POINT_DIR / f"{uid}.pt")
        idx = raw.datasets["train"].selector(xyz, uid, uid)
        np.testing.assert_array_equal(points.numpy(), xyz[idx])
    extent = batch["points"].amax(1) - batch["points"].amin(1)
    np.testing.assert_allclose(extent.amax(1).numpy(), 1.0, atol=0.02)      # the generator's ±0.5 box, unshrunk
    normalized = _dm(root, tmp_path, split_fractions=(1.0, 0.0), batch_size=10, normalize=True)
    normalized.setup("fit")
    unit = next(iter(normalized.train_dataloader()))
    assert unit["uid"] == batch["uid"]
    centred = batch["points"] - batch["points"].mean(1, keepdim=True)
    torch.testing.assert_close(unit["points"], centred / centred.norm(dim=-1).amax(1)[:, None, None], atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.1), (1.0, 0.0)])
def test_two_fractions_have_no_test_split(cap3d, tmp_path, fractions):
    """The test split is never the validation split: with (train, val) fractions there is no test split."""
    with pytest.raises(ValueError, match="no test split; give three"):
        _dm(cap3d[0], tmp_path, split_fractions=fractions).test_dataloader()


def test_three_fractions_give_disjoint_val_and_test_splits(cap3d, tmp_path):
    dm = _dm(cap3d[0], tmp_path, split_fractions=(0.4, 0.3, 0.3), load_images=False, batch_size=10)
    val = {u for b in dm.val_dataloader() for u in b["uid"]}
    test = {u for b in dm.test_dataloader() for u in b["uid"]}
    assert val and test and not val & test
    assert test == {o.uid for o in dm.splits()["test"]}


def test_generator_options_separate_caption_and_image_facts(tmp_path):
    """``grey_views``: the views show the shape in one grey; ``shape_in_caption=False``: the caption names the
    colour, not the shape; ``shapes`` / ``colors`` / ``two_tone_prob`` restrict the draws."""
    info = generate_cap3d(tmp_path, num_objects=6, views=2, image_size=32, points=1024, shapes=("sphere", "cube"),
                          colors=("red", "blue"), two_tone_prob=0.0, shape_in_caption=False, grey_views=True)
    for obj in info["objects"]:
        assert obj["shape"] in ("sphere", "cube") and obj["color"] == obj["top_color"] in ("red", "blue")
        assert obj["caption"].endswith(f"{obj['color']} object")
        rgba = RenderedViews(tmp_path / VIEW_DIR / obj["uid"]).rgba("00000")
        visible = rgba[..., 3] > 0
        rgb = rgba[..., :3][visible].astype(int)
        assert visible.any() and np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2])   # grey
        _, colors = read_point_cloud(tmp_path / POINT_DIR / f"{obj['uid']}.pt")
        np.testing.assert_array_equal(colors, np.broadcast_to(COLORS[obj["color"]], colors.shape))
    with pytest.raises(ValueError, match="unknown"):
        generate_cap3d(tmp_path / "x", num_objects=1, shapes=("blob",))
