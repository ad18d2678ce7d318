"""The cache of prepared ScanNet 2D-3D pairs: keyed by every setting that changes a frame's content, and a stale,
foreign or malformed file is an error naming it, never served or silently rebuilt."""
import os
import shutil

import numpy as np
import pytest

from datamodules.scannet.frame_pairs import PairCacheError, ScanNetFramePairs
from datamodules.scannet.pairs import PairConfig

CFG = PairConfig(image_size=(48, 64), voxel_size=0.05, depth_tolerance=0.02, min_pairs=8)


def dataset(root, cache, cfg=CFG, source="exported", frame_skip=1):
    return ScanNetFramePairs(root / "scans", ["scene0000_00"], cfg, frame_skip, source, cache)


@pytest.fixture
def scans(tiny_scannet, tmp_path):
    root = tmp_path / "scannet"
    shutil.copytree(tiny_scannet, root)
    return root


def test_every_content_setting_has_its_own_cache_and_frame_skip_shares_files(scans, tmp_path):
    cache = tmp_path / "cache"
    base = dataset(scans, cache)
    variants = [dataset(scans, cache, PairConfig((32, 48), 0.05, 0.02, 8)),
                dataset(scans, cache, PairConfig((48, 64), 0.04, 0.02, 8)),
                dataset(scans, cache, PairConfig((48, 64), 0.05, 0.05, 8)),
                dataset(scans, cache, PairConfig((48, 64), 0.05, 0.02, 9)),
                dataset(scans, cache, source="sens")]
    assert len({base.cache, *(v.cache for v in variants)}) == 6
    assert dataset(scans, cache, frame_skip=2).cache == base.cache
    base.prepare()
    assert sorted(p.name for p in base.cache.rglob("*.npz")) == ["0.npz", "1.npz", "2.npz", "3.npz"]
    stamps = {p: p.stat().st_mtime_ns for p in base.cache.rglob("*.npz")}
    assert dataset(scans, cache).prepare() == {} and stamps == {p: p.stat().st_mtime_ns for p in stamps}
    every_other = dataset(scans, cache, frame_skip=2)
    np.testing.assert_array_equal(every_other[1]["pairs"], dataset(scans, None)[2]["pairs"])


def test_a_frame_changed_after_caching_is_a_stale_cache_error(scans, tmp_path):
    """Before: the cached pair of the old depth map was served."""
    cached = dataset(scans, tmp_path / "cache")
    cached.prepare()
    depth = scans / "scans" / "scene0000_00" / "depth" / "2.png"
    stat = depth.stat()
    os.utime(depth, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = dataset(scans, tmp_path / "cache")
    fresh[1]  # other frames are unaffected
    with pytest.raises(PairCacheError, match=rf"scene0000_00/2\.npz is stale: {depth} changed"):
        fresh[2]
    with pytest.raises(PairCacheError, match=rf"scene0000_00/2\.npz is stale"):  # preparing again checks it too
        fresh.prepare()


def test_a_file_from_another_settings_folder_is_an_error(scans, tmp_path):
    a = dataset(scans, tmp_path / "cache")
    b = dataset(scans, tmp_path / "cache", PairConfig((48, 64), 0.04, 0.02, 8))
    a.prepare()
    target = b.cache / "scene0000_00" / "0.npz"
    target.parent.mkdir(parents=True)
    shutil.copy(a.cache / "scene0000_00" / "0.npz", target)
    with pytest.raises(PairCacheError, match=rf"{target} was made with other settings"):
        b[0]


def test_a_malformed_file_is_a_damaged_cache_error(scans, tmp_path):
    cached = dataset(scans, tmp_path / "cache")
    cached.prepare()
    path = cached.cache / "scene0000_00" / "1.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["pairs"] = arrays["pairs"][:, :2]
    np.savez(path, **arrays)
    with pytest.raises(PairCacheError, match=rf"{path} is damaged \(pairs has shape"):
        dataset(scans, tmp_path / "cache")[1]


def test_preparing_again_counts_the_cached_skips(scans, tmp_path):
    (scans / "scans" / "scene0000_00" / "pose" / "1.txt").write_text("nan nan nan nan\n" * 4)
    assert dataset(scans, tmp_path / "cache").prepare() == {"invalid_pose": 1}
    assert dataset(scans, tmp_path / "cache").prepare() == {"invalid_pose": 1}   # read from the files
