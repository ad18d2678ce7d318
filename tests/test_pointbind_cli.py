"""Point-Bind through the command line: fit on synthetic Cap3D-format data, then zero-shot test on synthetic
ModelNet40 with the fitted checkpoint."""
import torch

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
    assert list((run / "zs").rglob("events.out.tfevents.*"))
