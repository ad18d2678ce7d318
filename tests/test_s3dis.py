"""S3DIS: raw reader (incl. the NUL-glued line), prepared-room cache, area splits and the LightningDataModule."""
import warnings

import numpy as np
import pytest

from datamodules.s3dis import (S3DIS_CLASSES, S3DISCacheError, S3DISDataModule, S3DISFormatError, load_room,
                               prepare_rooms, read_annotation, read_room, split_areas)
from datamodules.s3dis.raw import ALIGNED_DIR, list_rooms, resolve_raw_root
from datamodules.s3dis.rooms import room_path, save_room
from datamodules.synthetic.s3dis import generate_s3dis
from datamodules.synthetic.s3dis import main as synthetic_main


@pytest.fixture(scope="module")
def s3dis(tmp_path_factory):
    """Areas 1 and 5, two rooms each (~6k points), the NUL defect in Area_5's last room."""
    root = tmp_path_factory.mktemp("s3dis")
    info = generate_s3dis(root, areas=(1, 5), rooms_per_area=2, points_per_room=6000, seed=0)
    return root, info


@pytest.fixture(scope="module")
def prepared(s3dis, tmp_path_factory):
    root, _ = s3dis
    dm = S3DISDataModule(str(root), areas=(1, 5), cache_dir=str(tmp_path_factory.mktemp("cache")), num_workers=0,
                         batch_size=2, val_batch_size=2, voxel_size=0.05)
    with pytest.warns(UserWarning, match="NUL"):
        dm.prepare_data()
    return dm


def prepared_setup(dm):
    """The module's data module, set up for fitting (train and held-out rooms)."""
    if dm.train_set is None:
        dm.setup("fit")
    return dm


def _lines(path):
    """Independent parse: python str.split per line (NUL read as a separator)."""
    text = path.read_bytes().replace(b"\x00", b" ").decode()
    return np.array([[float(t) for t in line.split()] for line in text.splitlines() if line.strip()])


def _no_nul_room(s3dis):
    root, info = s3dis
    return root / ALIGNED_DIR / info["rooms"][0]


def test_read_room_matches_annotation_files(s3dis):
    room_dir = _no_nul_room(s3dis)
    room = read_room(room_dir)
    files = sorted((room_dir / "Annotations").glob("*.txt"))
    assert room["coord"].dtype == np.float32 and room["color"].dtype == np.uint8
    assert room["segment"].dtype == np.int64 and room["instance"].dtype == np.int64
    start = 0
    for k, path in enumerate(files):
        ref = _lines(path)
        part = slice(start, start + len(ref))
        np.testing.assert_allclose(room["coord"][part], ref[:, :3], atol=1e-6)
        np.testing.assert_array_equal(room["color"][part], ref[:, 3:])
        cls = path.stem.split("_")[0]
        assert (room["segment"][part] == S3DIS_CLASSES.index("clutter" if cls == "stairs" else cls)).all()
        assert (room["instance"][part] == k).all()
        start += len(ref)
    assert start == len(room["coord"]) == len(_lines(room_dir / f"{room_dir.name}.txt"))
    assert any(p.name.startswith("stairs_") for p in files)  # stairs read as clutter above
    assert set(np.unique(room["segment"])) == set(range(13))


def test_nul_glued_line_warns_with_file_and_line_and_keeps_the_point(s3dis):
    _, info = s3dis
    path, line_no, rgb = info["malformed"]
    assert b"\x00" in path.read_bytes().split(b"\n")[line_no - 1]
    with pytest.warns(UserWarning, match=rf"{path.name}: NUL byte inside line {line_no};") as record:
        values = read_annotation(path)
    assert str(path) in str(record[0].message)
    assert len(values) == len(path.read_bytes().splitlines())
    np.testing.assert_array_equal(values[line_no - 1, 3:], rgb)
    np.testing.assert_allclose(values, _lines(path), atol=1e-9)


def _write_room(tmp_path, files: dict[str, str]):
    room = tmp_path / "Area_1" / "office_1"
    (room / "Annotations").mkdir(parents=True)
    for name, text in files.items():
        (room / "Annotations" / name).write_text(text)
    return room


GOOD = "1.000 2.000 0.500 128 64 32\n1.100 2.000 0.500 128 64 32\n"


@pytest.mark.parametrize("text, message", [
    (GOOD + "1.000 2.000 abc 1 2 3\n", r"chair_1\.txt line 3: non-numeric field 'abc'"),
    (GOOD + "\n1.000 2.000 0.5 1 2\n", r"chair_1\.txt line 4: expected 6 numbers"),
    ("1.000 2.000 0.500 1 2 3 4\n" + GOOD, r"chair_1\.txt line 1: expected 6 numbers"),
    ("1.0 2.0 3.0 1 2 3\n1.000 nan 0.5 1 2 3\n", r"chair_1\.txt line 2: coordinates must be finite"),
    (GOOD + "1.0 2.0 3.0 1 300 3\n", r"chair_1\.txt line 3: .*colours in 0\.\.255"),
    ("1.0 2.0 3.0 1 2\x003 4\n", r"chair_1\.txt line 1: expected 6 numbers"),  # still 7 after the NUL split
])
def test_malformed_lines_name_file_and_line(tmp_path, text, message):
    room = _write_room(tmp_path, {"chair_1.txt": text, "wall_1.txt": GOOD})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(S3DISFormatError, match=message):
            read_room(room)


def test_unknown_class_missing_annotations_and_empty_room_are_named_errors(tmp_path):
    room = _write_room(tmp_path, {"lamp_1.txt": GOOD})
    with pytest.raises(S3DISFormatError, match=r"lamp_1\.txt: unknown class 'lamp'.*ceiling, floor, wall"):
        read_room(room)
    bare = tmp_path / "Area_2" / "WC_1"
    bare.mkdir(parents=True)
    with pytest.raises(S3DISFormatError, match=rf"no Annotations folder \({bare / 'Annotations'} is missing\)"):
        read_room(bare)
    empty = _write_room(tmp_path / "e", {"wall_1.txt": "\n", ".DS_Store": "x"})
    with pytest.raises(S3DISFormatError, match=rf"{empty} is empty"):
        with pytest.warns(UserWarning, match=r"wall_1\.txt: empty S3DIS annotation file"):
            read_room(empty)
    (tmp_path / "Area_6").mkdir()
    with pytest.raises(S3DISFormatError, match=rf"{tmp_path / 'Area_6'} holds no rooms"):
        list_rooms(tmp_path, 6)


def test_hidden_and_duplicate_copies_are_skipped(tmp_path):
    room = _write_room(tmp_path, {"wall_1.txt": GOOD, "wall_1 (1).txt": GOOD, "Icon\r": "", "._wall_1.txt": "x"})
    with pytest.warns(UserWarning, match=r"wall_1 \(1\)\.txt: duplicate copy"):
        assert len(read_room(room)["coord"]) == 2


def test_missing_root_and_area_are_named(tmp_path, s3dis):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        resolve_raw_root(tmp_path / "nope")
    raw = resolve_raw_root(s3dis[0])
    assert raw == resolve_raw_root(raw) == s3dis[0] / ALIGNED_DIR
    with pytest.raises(FileNotFoundError, match=str(raw / "Area_3")):
        list_rooms(raw, 3)
    dm = S3DISDataModule(str(s3dis[0]), cache_dir=str(tmp_path / "c"), num_workers=0)  # all six areas asked
    with pytest.raises(FileNotFoundError, match=str(raw / "Area_2")):
        dm.prepare_data()


def test_cache_round_trip_and_idempotence(s3dis, tmp_path):
    root, info = s3dis
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="NUL"):
        names = prepare_rooms(root, cache, [1, 5])
    assert sorted(names) == sorted(info["rooms"])
    for name in names[:2]:
        loaded, raw = load_room(room_path(cache, name)), read_room(root / ALIGNED_DIR / name)
        assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in raw.items()}
        for key in raw:
            np.testing.assert_array_equal(loaded[key], raw[key])
    stamps = {n: room_path(cache, n).stat().st_mtime_ns for n in names}
    manifest = (cache / "manifest.json").read_text()
    assert all(f'"{n}": {len(load_room(room_path(cache, n))["coord"])}' in manifest for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is re-read: no NUL warning
        prepare_rooms(root, cache, [1, 5])
    assert stamps == {n: room_path(cache, n).stat().st_mtime_ns for n in names}
    room_path(cache, names[0]).unlink()
    prepare_rooms(root, cache, [1, 5])
    assert room_path(cache, names[0]).stat().st_mtime_ns != stamps[names[0]]
    assert all(room_path(cache, n).stat().st_mtime_ns == stamps[n] for n in names[1:])
    (cache / "manifest.json").unlink()  # a lost manifest is rebuilt from the cached rooms, which are kept
    prepare_rooms(root, cache, [1, 5])
    assert (cache / "manifest.json").read_text() == manifest
    assert all(room_path(cache, n).stat().st_mtime_ns == stamps[n] for n in names[1:])
    assert not list(cache.rglob("*.tmp"))


def test_damaged_cache_files_are_named(s3dis, tmp_path):
    root, info = s3dis
    good = read_room(_no_nul_room(s3dis))
    truncated = tmp_path / "truncated.npz"
    save_room(truncated, good)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(S3DISCacheError, match=rf"{truncated} is unreadable .*delete it"):
        load_room(truncated)
    bad_label = tmp_path / "bad_label.npz"
    save_room(bad_label, {**good, "segment": good["segment"] + 13})
    with pytest.raises(S3DISCacheError, match=rf"{bad_label} is damaged \(segment labels outside 0\.\.12\)"):
        load_room(bad_label)
    short = tmp_path / "short.npz"
    np.savez(short, coord=good["coord"], color=good["color"], segment=good["segment"][:5].astype(np.int16),
             instance=good["instance"].astype(np.int32))
    with pytest.raises(S3DISCacheError, match=rf"{short} is damaged .*do not match"):
        load_room(short)
    wrong_dtype = tmp_path / "wrong_dtype.npz"
    np.savez(wrong_dtype, coord=good["coord"].astype(np.float64), color=good["color"],
             segment=good["segment"].astype(np.int16), instance=good["instance"].astype(np.int32))
    with pytest.raises(S3DISCacheError, match=rf"{wrong_dtype} is damaged \(coord has dtype float64"):
        load_room(wrong_dtype)


def test_area_hold_out_and_six_fold_splits(prepared):
    assert split_areas(range(1, 7)) == ([1, 2, 3, 4, 6], [5])
    for k in range(1, 7):
        train, held = split_areas(range(1, 7), test_area=5, cross_validation_fold=k)
        assert held == [k] and train == [a for a in range(1, 7) if a != k]
    with pytest.raises(ValueError, match="cross_validation_fold"):
        split_areas(range(1, 7), cross_validation_fold=7)
    with pytest.raises(ValueError, match="held-out area 3"):
        split_areas([1, 5], test_area=3)
    dm = S3DISDataModule(str(prepared.hparams.root), areas=(1, 5), cross_validation_fold=1,
                         cache_dir=str(prepared.cache_root), num_workers=0)
    dm.setup("fit")
    assert all(n.startswith("Area_5/") for n in dm.train_set.names)
    assert len(dm.train_set.names) == 2 and all(n.startswith("Area_1/") for n in dm.val_set.names)
    assert all(n.startswith("Area_1/") for n in prepared_setup(prepared).train_set.names)


def test_val_sample_keeps_every_point_inside_its_voxel(prepared):
    dm = prepared_setup(prepared)
    sample = dm.val_set[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # this room holds the NUL line
        raw = read_room(resolve_raw_root(dm.hparams.root) / sample["name"])
    vs = dm.hparams.voxel_size
    cell = sample["coord"][sample["inverse"][:, 0]].astype(np.float64)
    p = sample["point_coord"].astype(np.float64)
    assert (cell * vs <= p + 1e-9).all() and (p < (cell + 1) * vs + 1e-9).all()
    shift = raw["coord"].astype(np.float64) - p  # CenterShift: one translation for the whole room
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-5)
    np.testing.assert_array_equal(sample["point_segment"], raw["segment"])
    np.testing.assert_array_equal(sample["point_color"], raw["color"])
    assert sample["point_color"].dtype == np.uint8 and sample["color"].dtype == np.float32
    assert set(sample) == {"coord", "color", "segment", "name", "inverse", "point_segment", "point_coord",
                           "point_color"}


def test_collating_two_rooms_gives_consistent_offsets(prepared):
    dm = prepared_setup(prepared)
    samples = [dm.val_set[0], dm.val_set[1]]
    batch = next(iter(dm.val_dataloader()))
    sizes = [len(s["coord"]) for s in samples]
    assert batch["names"] == [s["name"] for s in samples]
    assert batch["offset"].tolist() == [sizes[0], sizes[0] + sizes[1]]
    assert batch["coord"][:, 0].tolist() == [0] * sizes[0] + [1] * sizes[1]
    np.testing.assert_array_equal(batch["coord"][sizes[0]:, 1:].numpy(), samples[1]["coord"])
    points = [len(s["point_segment"]) for s in samples]
    inverse = batch["inverse"].numpy()
    assert inverse.shape == (sum(points), 2) and batch["point_coord"].shape == (sum(points), 3)
    np.testing.assert_array_equal(inverse[:, 0], np.repeat([0, 1], points))
    np.testing.assert_array_equal(inverse[points[0]:, 1] - sizes[0], samples[1]["inverse"][:, 0])
    # every point's voxel row holds that point's voxel and, via the batch index, its room
    np.testing.assert_array_equal(batch["coord"][inverse[:, 1], 0].numpy(), inverse[:, 0])
    assert str(batch["point_color"].dtype) == "torch.uint8" and str(batch["segment"].dtype) == "torch.int64"


def test_train_samples_are_augmented_reproducibly_per_epoch(prepared):
    dm = prepared_setup(prepared)
    train = dm.train_set
    assert set(train[0]) == {"coord", "color", "segment", "name"}
    a, b = train[0], train[0]
    np.testing.assert_array_equal(a["color"], b["color"])
    train.set_epoch(1)
    c = train[0]
    train.set_epoch(0)
    assert not np.array_equal(a["color"], c["color"])
    looped = S3DISDataModule(str(dm.hparams.root), areas=(1, 5), cache_dir=str(dm.cache_root), train_loop=3,
                             num_workers=0, max_train_rooms=1)
    looped.setup("fit")
    assert len(looped.train_set) == 3 and len({len(looped.train_set[i]["coord"]) for i in range(3)}) > 1


def _epoch_batches(dm, epochs=(0, 1)):
    loader = dm.train_dataloader()
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)  # what Lightning calls at the start of each epoch
        out.append([(b["names"], b["color"].numpy().copy()) for b in loader])
    return out


def test_epoch_reaches_loader_workers(prepared):
    root, cache = str(prepared.hparams.root), str(prepared.cache_root)
    kwargs = dict(areas=(1, 5), cache_dir=cache, batch_size=1, seed=3)
    in_process = S3DISDataModule(root, num_workers=0, **kwargs)
    in_process.setup("fit")
    workers = S3DISDataModule(root, num_workers=1, **kwargs)
    workers.setup("fit")
    ref, got = _epoch_batches(in_process), _epoch_batches(workers)
    for ref_epoch, got_epoch in zip(ref, got):
        for (ref_names, ref_color), (names, color) in zip(ref_epoch, got_epoch):
            assert ref_names == names
            np.testing.assert_array_equal(ref_color, color)
    first, second = ({names[0]: color for names, color in epoch} for epoch in ref)
    assert first.keys() == second.keys() and not any(np.array_equal(first[n], second[n]) for n in first)


def test_synthetic_cli_writes_the_layout(tmp_path):
    synthetic_main(["--out", str(tmp_path), "--areas", "2", "--rooms-per-area", "1", "--points-per-room", "2000",
                    "--no-malformed-line"])
    room = tmp_path / ALIGNED_DIR / "Area_2" / "office_1"
    assert (room / "office_1.txt").exists() and (room / "Annotations" / "ceiling_1.txt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_room(room)["coord"]) > 1500
    assert b"\x00" not in (room / "office_1.txt").read_bytes()
