"""ESC-50 in its release layout, the synthetic generator of that layout, and audio -> 3D retrieval scored on the
ESC-50 classes that map onto ModelNet40 classes (configs/pointbind_esc50.yaml)."""
import csv
import json

import numpy as np
import pytest
import soundfile
import torch
import yaml

from datamodules.esc50 import ESC50_CATEGORIES, ESC50DataModule, ESC50FormatError, read_meta
from datamodules.modelnet40.common import MODELNET40_CLASSES
from datamodules.synthetic.esc50 import generate_esc50
from datamodules.synthetic.modelnet40 import generate_modelnet40
from lang3d.metrics.retrieval import retrieval_scores
from lang3d.training.cli import build_cli

CLASS_MAP = yaml.safe_load(open("configs/pointbind_esc50.yaml"))["data"]["init_args"]["class_map"]


@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    root = tmp_path_factory.mktemp("esc50")
    generate_esc50(root, [*CLASS_MAP, "dog"], clips_per_class=5, seconds=2.2, sample_rate=16000)
    return root


def test_generator_writes_the_real_layout_with_one_tone_per_class(esc50):
    clips = read_meta(esc50)
    assert len(clips) == 55 and {c.fold for c in clips} == {1, 2, 3, 4, 5}
    with open(esc50 / "meta" / "esc50.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["filename"] == f"{row['fold']}-{row['src_file']}-{row['take']}-{row['target']}.wav"
    for clip in clips[::5]:
        assert ESC50_CATEGORIES[clip.target] == clip.category and clip.path.is_file()
        samples, rate = soundfile.read(clip.path)
        spectrum = np.abs(np.fft.rfft(samples))
        peak = np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()]
        assert abs(peak - 110 * 2 ** (clip.target / 8)) < 2, (clip.category, peak)   # the class's own tone


def test_datamodule_splits_by_fold_and_labels_mapped_classes(esc50):
    dm = ESC50DataModule(str(esc50), train_folds=[1, 2, 3, 4], test_folds=[5], num_workers=0, batch_size=4,
                         labels={"car_horn": 7, "door_wood_knock": 12})
    dm.setup("fit")
    assert [c.fold for c in dm.dataset("train").clips] == [1, 2, 3, 4] * 2
    assert {c.category for c in dm.dataset("test").clips} == {"car_horn", "door_wood_knock"}
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio"].shape == (2, 3, 1, 128, 204)
    assert batch["label"].tolist() == [{"car_horn": 7, "door_wood_knock": 12}[c] for c in batch["category"]]
    only_dogs = ESC50DataModule(str(esc50), categories=["dog"], num_workers=0)
    assert [c.category for c in only_dogs.dataset("test").clips] == ["dog"]
    assert dm.class_names[ESC50_CATEGORIES.index("dog")] == "dog"


def test_bad_layouts_name_the_file(esc50, tmp_path):
    with pytest.raises(ESC50FormatError, match=r"meta/esc50\.csv does not exist"):
        read_meta(tmp_path)
    (tmp_path / "meta").mkdir()
    lines = (esc50 / "meta" / "esc50.csv").read_text().splitlines()
    (tmp_path / "meta" / "esc50.csv").write_text(lines[0].replace(",take", "") + "\n")
    with pytest.raises(ESC50FormatError, match=r"lacks the columns \['take'\]"):
        read_meta(tmp_path)
    bad_fold = lines[1].split(",")
    bad_fold[1] = "6"
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join([lines[0], ",".join(bad_fold)]) + "\n")
    with pytest.raises(ESC50FormatError, match=r"esc50\.csv row 2: fold 6 is not one of"):
        read_meta(tmp_path)
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(lines[:3]) + "\n")   # its audio files are not there
    with pytest.raises(ESC50FormatError, match=r"audio files of meta/esc50\.csv are missing, e\.g\. .*\.wav"):
        ESC50DataModule(str(tmp_path), test_folds=[1, 2, 3, 4, 5]).dataset("test")
    with pytest.raises(ESC50FormatError, match=r"has no category \['thunder'\]"):
        ESC50DataModule(str(esc50), categories=["thunder"]).dataset("test")
    with pytest.raises(ValueError, match=r"data.test_folds must be folds among"):
        ESC50DataModule(str(esc50), test_folds=[0])


def test_class_map_names_must_exist_on_both_sides(esc50, tmp_path):
    from pointbind.data import AudioTo3DDataModule, DataSettingsError

    generate_modelnet40(tmp_path / "mn40", classes=("door",), train_per_class=0, test_per_class=1, points=64,
                        formats=("resampled",))
    gallery = {"class_path": "datamodules.modelnet40.ModelNet40DataModule",
               "init_args": {"root": str(tmp_path / "mn40"), "num_points": 64, "num_workers": 0}}
    queries = {"class_path": "datamodules.esc50.ESC50DataModule", "init_args": {"root": str(esc50), "num_workers": 0}}
    with pytest.raises(DataSettingsError, match=r"data.class_map maps onto \['spaceship'\], not classes of the gallery"):
        AudioTo3DDataModule(gallery, queries, {"door_wood_knock": "spaceship"}).setup("test")
    with pytest.raises(ESC50FormatError, match=r"has no category \['door_bell'\]"):
        AudioTo3DDataModule(gallery, queries, {"door_bell": "door"}).setup("test")
    data = AudioTo3DDataModule(gallery, queries, {"door_wood_knock": "door"})
    data.setup("test")
    assert data.queries.hparams.labels == {"door_wood_knock": MODELNET40_CLASSES.index("door")}


def test_class_map_is_of_real_classes():
    assert set(CLASS_MAP) <= set(ESC50_CATEGORIES) and set(CLASS_MAP.values()) <= set(MODELNET40_CLASSES)
    assert {"airplane": "airplane", "car_horn": "car", "toilet_flush": "toilet", "door_wood_knock": "door",
            "keyboard_typing": "keyboard"}.items() <= CLASS_MAP.items()


def test_audio_to_3d_retrieval_through_the_cli(esc50, tmp_path):
    """lightning test -c pointbind_zeroshot.yaml -c pointbind_imagebind.yaml -c pointbind_esc50.yaml (tiny random
    ImageBind towers, a tiny encoder): every ESC-50 fold is a query, each sound relevant to the ModelNet40 shapes of
    the class it maps to; the scores logged equal the retrieval metrics on the run's own embeddings."""
    generate_modelnet40(tmp_path / "mn40", classes=("door", "keyboard", "table"), train_per_class=0,
                        test_per_class=3, points=256, formats=("resampled",))
    args = ["test", "-c", "configs/pointbind_zeroshot.yaml", "-c", "configs/pointbind_imagebind.yaml",
            "-c", "configs/pointbind_esc50.yaml", "-c", "configs/pointbind_esc50_demo.yaml",
            "--data.init_args.gallery.init_args.root", str(tmp_path / "mn40"),
            "--data.init_args.gallery.init_args.num_points", "256",
            "--data.init_args.gallery.init_args.num_workers", "0",
            "--data.init_args.queries.init_args.root", str(esc50),
            "--data.init_args.queries.init_args.num_workers", "0",
            "--model.init_args.encoder_options", json.dumps({"num_groups": 8, "group_size": 8, "tokenizer_dim": 16,
                                                             "tokenizer_hidden": [16, 16, 16], "width": 16,
                                                             "depth": 1, "heads": 2, "pos_hidden": 8}),
            "--model.init_args.embedding_cache", "null", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]
    cli = build_cli(args)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "audio_to_3d" in k}
    assert sorted(metrics) == [f"test_retrieval_classes/audio_to_3d/{m}" for m in ("R@1", "R@10", "R@5", "mAP")]
    module, data = cli.model.eval(), cli.datamodule
    assert module.image_encoder is None                               # modalities: text and audio
    gallery = data.gallery.dataset("test")
    names = data.gallery.class_names
    queries = data.queries.dataset("test")
    assert {c.category for c in queries.clips} == set(CLASS_MAP) and len(queries) == len(CLASS_MAP) * 5
    with torch.no_grad():
        points = module(torch.stack([torch.as_tensor(gallery[i]["points"]) for i in range(len(gallery))]))
        sounds = module.embed_audio(torch.stack([queries[i]["audio"] for i in range(len(queries))]))
    shape_labels = torch.tensor([int(gallery[i]["label"]) for i in range(len(gallery))])
    sound_labels = torch.tensor([names.index(CLASS_MAP[c.category]) for c in queries.clips])
    expected = retrieval_scores(sounds, points, sound_labels, shape_labels, (1, 5, 10))
    assert expected["queries"] == 15                                  # door (2 sound classes) and keyboard: 3 x 5
    for k in ("R@1", "R@5", "R@10", "mAP"):
        assert metrics[f"test_retrieval_classes/audio_to_3d/{k}"] == pytest.approx(float(expected[k]), abs=1e-6)
