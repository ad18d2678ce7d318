"""Outputs written by callbacks (``lang3d.training.writers``, ``text4point.writers``, ``pointbind.writers``): a module's
``test_step`` / ``predict_step`` returns what is to be written and writes nothing itself; the writer writes exactly
those records in the layout the README documents; every config a README / Makefile command stacks configures its
writer; under 2-process DDP the files equal those of one process."""
import json
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from plyfile import PlyData

from datamodules import S3DISDataModule
from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.s3dis import generate_s3dis
from lang3d.training.cli import main as cli_main
from lang3d.training.writers import BaseTestWriter
from lang3d.visual.tensorboard import label_colors
from pointbind.writers import ArithmeticRankingWriter
from text4point import Text4PointSegmentation
from text4point.detection import PREDICTION_DTYPE
from text4point.finetune import RoomLabels
from text4point.guided_net import LanguageGuidedNet
from text4point.instance import RoomInstances
from text4point.writers import DetectionPredictionWriter, InstancePredictionWriter, SegmentationPredictionWriter

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "text4point"
ABLATIONS = sorted(p.name for p in (CONFIGS / "ablations").glob("*.yaml"))


class ReturnsRecords(L.LightningModule):
    """``test_step`` returns ``records[batch_idx]``; one batch per record."""

    def __init__(self, records: list, class_names: list[str] = ("a", "b", "c")):
        super().__init__()
        self.records, self.class_names = records, list(class_names)

    def test_step(self, batch, batch_idx):
        return self.records[batch_idx]

    def test_dataloader(self):
        return torch.utils.data.DataLoader(range(len(self.records)), batch_size=1)


def run_test(records: list, writer: BaseTestWriter, tmp_path: Path) -> Path:
    """``trainer.test`` of ``ReturnsRecords(records)`` with ``writer``; returns the run's log directory."""
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[writer], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(ReturnsRecords(records))
    return Path(trainer.log_dir)


def test_segmentation_writer_writes_labels_and_a_coloured_ply_per_room(tmp_path):
    rng = np.random.default_rng(0)
    rooms = [RoomLabels(f"Area_5/room_{i}", rng.normal(size=(50 + i, 3)).astype(np.float32),
                        rng.integers(0, 3, 50 + i).astype(np.int64)) for i in range(3)]
    log_dir = run_test([rooms[:2], rooms[2:]], SegmentationPredictionWriter(), tmp_path)
    written = sorted(p.relative_to(log_dir).as_posix() for p in log_dir.rglob("predictions/**/*") if p.is_file())
    assert written == sorted([f"predictions/{r.name}.labels.npy" for r in rooms] +
                             [f"predictions/{r.name}.ply" for r in rooms])
    for room in rooms:
        labels = np.load(log_dir / "predictions" / f"{room.name}.labels.npy")
        assert labels.dtype == np.int64 and np.array_equal(labels, room.labels)
        vertex = PlyData.read(str(log_dir / "predictions" / f"{room.name}.ply"))["vertex"]
        np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), room.xyz)
        colours = np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1)
        np.testing.assert_array_equal(colours, label_colors(room.labels, 3))
        np.testing.assert_array_equal(vertex["label"], room.labels)


def test_detection_writer_writes_the_rows_per_scene(tmp_path):
    rows = np.zeros(4, PREDICTION_DTYPE)
    rows["box"], rows["score"], rows["label"] = np.arange(28).reshape(4, 7), [0.9, 0.5, 0.25, 0.0], [3, 1, 0, 2]
    log_dir = run_test([{"scene0000_00": rows, "scene0001_00": rows[:0]}], DetectionPredictionWriter(), tmp_path)
    assert sorted(p.name for p in (log_dir / "predictions").iterdir()) == ["scene0000_00.npy", "scene0001_00.npy"]
    read = np.load(log_dir / "predictions" / "scene0000_00.npy")
    assert read.dtype == PREDICTION_DTYPE and read.tobytes() == rows.tobytes()
    assert len(np.load(log_dir / "predictions" / "scene0001_00.npy")) == 0


def test_instance_writer_writes_the_scannet_benchmark_layout(tmp_path):
    masks = np.array([[1, 1, 0, 0, 1], [0, 0, 1, 1, 0]], bool)
    room = RoomInstances("Area_5/office_1", np.arange(5), masks, np.array([8, 2]), np.array([0.75, 0.125], np.float32))
    empty = RoomInstances("Area_5/office_2", np.arange(3), np.zeros((0, 3), bool), np.zeros(0, np.int64),
                          np.zeros(0, np.float32))
    log_dir = run_test([[room, empty]], InstancePredictionWriter(), tmp_path)
    area = log_dir / "instances" / "Area_5"
    assert (area / "office_1.txt").read_text() == ("predicted_masks/office_1_000.txt 8 0.750000\n"
                                                   "predicted_masks/office_1_001.txt 2 0.125000\n")
    assert (area / "predicted_masks" / "office_1_000.txt").read_text() == "1\n1\n0\n0\n1\n"
    assert (area / "predicted_masks" / "office_1_001.txt").read_text() == "0\n0\n1\n1\n0\n"
    assert (area / "office_2.txt").read_text() == ""
    assert sorted(p.name for p in area.rglob("*") if p.is_file()) == [
        "office_1.txt", "office_1_000.txt", "office_1_001.txt", "office_2.txt"]


def test_a_writer_names_a_test_step_that_returns_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"SegmentationPredictionWriter .* ReturnsRecords.test_step returned None"):
        run_test([None], SegmentationPredictionWriter(), tmp_path)


def test_segmentation_test_step_returns_its_predictions_and_writes_nothing_itself(tmp_path):
    """The real module: without a writer ``test`` leaves no file; with one, the files hold exactly what
    ``test_step`` returned (each point's class, through the inverse index)."""
    root = tmp_path / "s3dis"
    generate_s3dis(root, areas=(1, 5), rooms_per_area=2, points_per_room=2000, seed=0)
    dm = S3DISDataModule(str(root), areas=(1, 5), test_area=5, batch_size=2, val_batch_size=2, num_workers=0)
    model = Text4PointSegmentation(list(S3DISDataModule.class_names),
                                   network=partial(LanguageGuidedNet, clip_model="lang3d-tiny-RN",
                                                   clip_pretrained=None))
    returned = []

    class Keep(L.Callback):
        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            returned.extend(outputs)

    def test(callbacks: list, folder: Path) -> Path:
        trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=callbacks, default_root_dir=folder, logger=False,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.test(model, dm)
        return folder

    bare = test([Keep()], tmp_path / "bare")
    assert not list(bare.rglob("*.npy")) and not list(bare.rglob("*.ply"))
    assert sorted(r.name for r in returned) == sorted(dm.val_set.names)
    written = test([SegmentationPredictionWriter()], tmp_path / "written")
    for room in returned:
        np.testing.assert_array_equal(np.load(written / "predictions" / f"{room.name}.labels.npy"), room.labels)


SEGMENTATION, INSTANCES, DETECTION = (f"text4point.writers.{name}" for name in (
    "SegmentationPredictionWriter", "InstancePredictionWriter", "DetectionPredictionWriter"))
ARITHMETIC_WRITER = "pointbind.writers.ArithmeticRankingWriter"
STACKS = [("test", ["text4point/finetune_s3dis.yaml"], SEGMENTATION),
          ("test", ["text4point/finetune_s3dis.yaml", "text4point/demo_synthetic_s3dis.yaml"], SEGMENTATION),
          *[("test", ["text4point/finetune_s3dis.yaml", f"text4point/ablations/{name}"], SEGMENTATION)
            for name in ABLATIONS],
          ("test", ["text4point/instance_s3dis.yaml"], INSTANCES),
          ("test", ["text4point/instance_s3dis.yaml", "text4point/demo_synthetic_s3dis_ins.yaml"], INSTANCES),
          ("test", ["text4point/detection_scannet.yaml"], DETECTION),
          ("test", ["text4point/detection_scannet.yaml", "text4point/demo_synthetic_scannet_det.yaml"], DETECTION),
          ("test", ["text4point/detection_sunrgbd.yaml"], DETECTION),
          ("test", ["text4point/detection_sunrgbd.yaml", "text4point/demo_synthetic_sunrgbd_det.yaml"], DETECTION),
          ("predict", ["pointbind.yaml", "pointbind_arithmetic.yaml"], ARITHMETIC_WRITER),
          ("predict", ["pointbind.yaml", "pointbind_demo.yaml", "pointbind_arithmetic.yaml"], ARITHMETIC_WRITER),
          ("predict", ["pointbind.yaml", "pointbind_imagebind.yaml", "pointbind_audio.yaml"], ARITHMETIC_WRITER),
          ("predict", ["pointbind.yaml", "pointbind_imagebind.yaml", "pointbind_audio.yaml",
                       "pointbind_audio_demo.yaml"], ARITHMETIC_WRITER),
          ("predict", ["sepe_sample.yaml"], "sepe.writers.GeneratedCloudWriter")]


@pytest.mark.parametrize("command, stack, writer", STACKS, ids=["+".join(s) for _, s, _ in STACKS])
def test_every_config_stack_configures_its_writer_once(command, stack, writer, capsys):
    """``lightning test|predict -c A -c B``: an overlay that sets ``trainer.callbacks`` replaces the list, so the
    writer must survive every stack the README and the Makefile use."""
    args = [command]
    for name in stack:
        args += ["-c", str(REPO / "configs" / name)]
    with pytest.raises(SystemExit):
        cli_main([*args, "--print_config"])
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert [c["class_path"] for c in callbacks].count(writer) == 1, callbacks


# ---------------------------------------------------------------- Point-Bind embedding arithmetic (predict)
class PredictsRecords(L.LightningModule):
    """``predict_step`` returns ``{"query": i}`` for the i-th of ``n`` samples."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def predict_step(self, batch, batch_idx):
        return {"query": int(batch[0])}

    def predict_dataloader(self):
        return torch.utils.data.DataLoader(range(self.n), batch_size=1)


def test_arithmetic_writer_writes_every_query_in_order_once(tmp_path):
    output = tmp_path / "deep" / "ranking.json"
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        callbacks=[ArithmeticRankingWriter(str(output))])
    trainer.predict(PredictsRecords(5), return_predictions=False)
    assert json.loads(output.read_text()) == [{"query": i} for i in range(5)]
    assert [p.name for p in output.parent.iterdir()] == ["ranking.json"]   # no temporary file left


def test_arithmetic_predict_takes_its_request_from_the_batches_not_the_trainers_datamodule(tmp_path):
    """The queries' loader alone (no datamodule attached to the trainer): gallery, k and weights come with the
    batches; weights (0, 1) make the composed query the text itself, so each text ranks its own caption first."""
    from pointbind.arithmetic_data import ArithmeticQueriesDataModule
    from pointbind.module import PointBindAlignment

    generate_cap3d(tmp_path / "cap3d", num_objects=1, views=1, image_size=32, points=128)
    cloud = str(next((tmp_path / "cap3d").rglob("*.pt")))
    gallery = ["a red cube", "a blue sphere", "a green cone"]
    dm = ArithmeticQueriesDataModule([{"points": cloud, "text": text} for text in gallery[::-1]], gallery_texts=gallery,
                                     num_points=64, k=3, weights=(0.0, 1.0))
    model = PointBindAlignment(encoder="pointbert", clip_model="lang3d-tiny-ViT", clip_pretrained=None,
                               encoder_options={"num_groups": 8, "group_size": 8, "tokenizer_dim": 16,
                                                "tokenizer_hidden": [16, 16, 16], "width": 16, "depth": 1,
                                                "heads": 2, "pos_hidden": 8})
    output = tmp_path / "ranking.json"
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        callbacks=[ArithmeticRankingWriter(str(output))])
    trainer.predict(model, dataloaders=dm.predict_dataloader(), return_predictions=False)
    rankings = json.loads(output.read_text())
    assert [r["nearest"][0]["item"] for r in rankings] == gallery[::-1]
    assert all(len(r["nearest"]) == 3 for r in rankings)


@pytest.fixture(scope="module")
def arithmetic_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap3d")
    generate_cap3d(root, num_objects=3, views=1, image_size=32, points=512)
    clouds = sorted(str(p) for p in root.rglob("*.pt"))
    texts = ["a red cube", "a blue sphere", "a green cone", "a wooden chair"]
    queries = [{"points": cloud, "text": text} for cloud in clouds for text in texts[:2]]
    return ["--data.queries", json.dumps(queries), "--data.gallery_texts", json.dumps(texts), "--data.num_points",
            "512", "--data.k", "3", "--seed_everything", "0"]


# the README's command on the demo's tiny model (the released configs need downloaded CLIP and I2P-MAE weights)
ARITHMETIC = ["predict", "-c", "configs/pointbind.yaml", "-c", "configs/pointbind_demo.yaml",
              "-c", "configs/pointbind_arithmetic.yaml", "--trainer.enable_progress_bar", "false"]


def check_rankings(path: Path, inputs: list[str]) -> list[dict]:
    rankings = json.loads(path.read_text())
    assert [{k: r[k] for k in ("points", "text")} for r in rankings] == json.loads(inputs[1])
    assert all(len(r["nearest"]) == 3 and r["nearest"][0]["score"] >= r["nearest"][2]["score"] for r in rankings)
    return rankings


def test_arithmetic_config_writes_the_ranking_json(arithmetic_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the config writes runs/pointbind/arithmetic.json under the working directory
    cli_main([ARITHMETIC[0], *[str(REPO / a) if a.startswith("configs/") else a for a in ARITHMETIC[1:]],
              "--trainer.accelerator", "cpu", "--trainer.devices", "1", *arithmetic_inputs])
    check_rankings(tmp_path / "runs/pointbind/arithmetic.json", arithmetic_inputs)


@pytest.mark.ddp
def test_arithmetic_under_ddp_writes_the_one_process_file(arithmetic_inputs, tmp_path):
    """6 queries over 2 processes (3 each): the file holds all of them, in query order, as one process writes it."""
    from test_ddp_pipelines import run_ddp

    def run_in(folder: Path) -> list[str]:
        """Every file of the run under ``folder``; the rankings to ``<folder>/arithmetic.json``."""
        writer = {"class_path": "pointbind.writers.ArithmeticRankingWriter",
                  "init_args": {"output": str(folder / "arithmetic.json")}}
        return [*ARITHMETIC, *arithmetic_inputs, "--model.init_args.embedding_cache", str(folder / "cache"),
                "--trainer.default_root_dir", str(folder), "--trainer.callbacks", json.dumps([writer])]

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    cli_main([*run_in(single), "--trainer.accelerator", "cpu", "--trainer.devices", "1"])
    run_ddp(run_in(ddp))
    rankings = check_rankings(ddp / "arithmetic.json", arithmetic_inputs)
    assert rankings == check_rankings(single / "arithmetic.json", arithmetic_inputs)


# ---------------------------------------------------------------- SEPE generation (predict)
def test_cloud_writer_names_an_unknown_format():
    from sepe.writers import GeneratedCloudWriter

    with pytest.raises(ValueError, match=r"unknown output formats \['obj'\]"):
        GeneratedCloudWriter("out", formats=["ply", "obj"])


@pytest.mark.ddp
def test_sepe_generation_under_ddp_writes_every_prompt_once(tmp_path):
    """``lightning predict -c configs/sepe_sample.yaml`` (a one-step checkpoint of the shipped tiny config), 4
    prompts over 2 processes: each process writes the prompts it generated, so the files are those of a one-process
    run, each once, for the same prompts. (The clouds themselves differ: a process draws its prompts' noise in
    sequence.)"""
    from test_ddp_pipelines import _cap3d, run_ddp

    generate_cap3d(tmp_path / "objects" / "cap3d", num_objects=4, views=1, image_size=32, points=512)
    checkpoints = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0}}
    cli_main(["fit", "-c", str(REPO / "configs/sepe.yaml"), *_cap3d("data", tmp_path / "objects"),
              "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", json.dumps([checkpoints]),
              "--trainer.enable_progress_bar", "false"])
    image = next((tmp_path / "objects" / "cap3d").rglob("00000.png"))
    prompts = ["a red chair", "a blue table", "a green lamp", "a small boat"]

    def predict(folder: Path) -> list[str]:
        writer = {"class_path": "sepe.writers.GeneratedCloudWriter", "init_args": {"output_dir": str(folder)}}
        checkpoint = tmp_path / "ckpt" / "last.ckpt"
        return ["predict", "-c", str(REPO / "configs/sepe_sample.yaml"), "--ckpt_path", str(checkpoint),
                "--data.prompts", json.dumps(prompts), "--data.images", json.dumps([str(image)]), "--data.steps", "2",
                "--data.batch_size", "1", "--trainer.default_root_dir", str(folder), "--trainer.callbacks",
                json.dumps([writer]), "--trainer.enable_progress_bar", "false", "--seed_everything", "0"]

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    cli_main([*predict(single), "--trainer.accelerator", "cpu"])
    run_ddp(predict(ddp))
    def clouds(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.suffix in (".ply", ".npz"))

    assert len(clouds(single)) == 2 * len(prompts) and clouds(ddp) == clouds(single)
    for path in single.glob("*.npz"):
        alone, twin = np.load(path), np.load(ddp / path.name)
        assert str(twin["prompt"]) == str(alone["prompt"]) and twin["coords"].shape == alone["coords"].shape
