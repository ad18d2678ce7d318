"""lang3d.training.atomic / lang3d.visual.ply: a write that fails leaves the previous file as it was and no temporary
file."""
import numpy as np
import pytest
from plyfile import PlyData

from lang3d.training.atomic import atomic_write
from lang3d.visual.ply import write_point_ply


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path, "w") as f:
        f.write("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("half of the sec")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(path, "a"):
            pass


def test_write_point_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(50, 3)).astype(np.uint8)
    label = rng.integers(0, 13, size=50).astype(np.uint16)
    write_point_ply(tmp_path / "cloud.ply", xyz, rgb, label=label)
    vertex = PlyData.read(str(tmp_path / "cloud.ply"))["vertex"]
    np.testing.assert_array_equal(np.stack([vertex[n] for n in "xyz"], 1), xyz)
    np.testing.assert_array_equal(np.stack([vertex[n] for n in ("red", "green", "blue")], 1), rgb)
    np.testing.assert_array_equal(vertex["label"], label)
    assert vertex["label"].dtype == np.uint16
    with pytest.raises(ValueError, match="label"):
        write_point_ply(tmp_path / "bad.ply", xyz, rgb, label=label[:3])
    assert not (tmp_path / "bad.ply").exists()
