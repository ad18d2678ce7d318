"""Point-Bind through the command line: fit on synthetic Cap3D-format data, then zero-shot test on synthetic
ModelNet40 with the fitted checkpoint."""
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_hparams_summary import hparams_summary

from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40
from lang3d.training.cli import main as cli_main


def test_demo_fit_then_zero_shot_test_through_the_cli(tmp_path):
    generate_cap3d(tmp_path / "cap3d", num_objects=12, views=2, image_size=48, points=1024)
    generate_modelnet40(tmp_path / "modelnet40", train_per_class=1, test_per_class=1, points=512,
                        formats=("resampled",))
    run = tmp_path / "run"
    cli_main(["fit", "-c", "configs/pointbind.yaml", "-c", "configs/pointbind_demo.yaml",
              "--data.init_args.alignment.init_args.root", str(tmp_path / "cap3d"),
              "--data.init_args.alignment.init_args.num_workers", "0",
              "--data.init_args.alignment.init_args.num_points", "256",
              "--data.init_args.zeroshot.init_args.root", str(tmp_path / "modelnet40"),
              "--data.init_args.zeroshot.init_args.num_workers", "0",
              "--data.init_args.zeroshot.init_args.num_points", "256",
              "--model.init_args.embedding_cache", str(run / "cache"), "--trainer.max_epochs", "1",
              "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
              "--trainer.callbacks.dirpath", str(run / "ckpt"), "--trainer.enable_progress_bar", "false"])
    ckpt = run / "ckpt" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["hyper_parameters"]["_class_path"] == "pointbind.PointBindAlignment"
    cli_main(["test", "-c", "configs/pointbind_zeroshot.yaml", "-c", "configs/pointbind_zeroshot_demo.yaml",
              "--data.root", str(tmp_path / "modelnet40"), "--data.init_args.num_workers", "0",
              "--data.init_args.num_points", "256", "--trainer.default_root_dir", str(run / "zs"),
              "--trainer.logger.init_args.save_dir", str(run / "zs"), "--trainer.enable_progress_bar", "false",
              "--ckpt_path", str(ckpt)])
    # TensorBoard's HParams data (the configs' HParamsSummary): the run's settings with the final value of each chosen
    # metric that the stage logged (fit: the zero-shot scores, train/loss; test: the zero-shot scores), no hp_metric
    fit, test = run / "tensorboard", run / "zs" / "tensorboard"
    for folder, config, must in ((fit, "configs/pointbind_demo.yaml", {"val/zeroshot_top1", "train/loss"}),
                                 (test, "configs/pointbind_zeroshot.yaml", {"test/zeroshot_top1"})):
        [summary] = [c for c in yaml.safe_load(Path(config).read_text())["trainer"]["callbacks"]
                     if c["class_path"] == "lang3d.visual.hparams.HParamsSummary"]
        [events_file] = folder.rglob("events.out.tfevents.*")
        events = EventAccumulator(str(events_file.parent))
        events.Reload()
        logged = set(events.Tags()["scalars"])
        tags, hparams = hparams_summary(events)
        assert tags == {f"final/{name}" for name in summary["init_args"]["metrics"] if name in logged | must}, config
        assert {f"final/{name}" for name in must} <= tags and hparams["encoder"].string_value == "pointbert"
        assert "hp_metric" not in logged and not any(name.startswith("_") for name in hparams)   # no CLI internals
        for tag in tags - {"final/train/loss"}:   # epoch metrics: the last logged value (train/loss: the last
            [final] = events.Scalars(tag)          # step's, which log_every_n_steps may leave out of the file)
            assert final.value == pytest.approx(events.Scalars(tag.removeprefix("final/"))[-1].value, rel=1e-6), tag
