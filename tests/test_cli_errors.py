"""A failing command reports the project's own message first, in a few lines (lang3d.training.user_errors)."""
import os
import subprocess
import sys
from pathlib import Path

from lang3d.training.cli import linked_arguments_given, missing_data_roots
from lang3d.training.user_errors import project_error

REPO = Path(__file__).resolve().parents[1]


def _run(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lang3d", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line
            and line.strip() and not line.startswith("Seed set")]


def test_missing_data_root_is_reported_before_weights_are_loaded():
    result = _run("fit", "-c", "configs/text4point/pretrain_scannet.yaml", "--data.root", "/nonexistent/scannet")
    lines = _error_lines(result.stderr)
    assert result.returncode == 1
    assert lines[0].startswith("error: DataRootError") and "/nonexistent/scannet" in lines[0], lines
    assert "CLIP" not in result.stderr and "Traceback" not in result.stderr
    assert len(lines) <= 3, lines
    log = lines[1].split("full traceback: ")[1].split(";")[0]
    assert "Traceback" in Path(log).read_text()


def test_weights_error_comes_first_not_the_union_message(tmp_path):
    result = _run("fit", "-c", "configs/text4point/pretrain_scannet.yaml", "--data.root", str(tmp_path))
    lines = _error_lines(result.stderr)
    assert result.returncode == 1
    assert lines[0].startswith("error: CLIPWeightsUnavailable") and "'RN50'" in lines[0], lines
    assert "Union subtypes" not in result.stderr and len(lines) <= 3, lines
    shown = _run("fit", "-c", "configs/text4point/pretrain_scannet.yaml", "--data.root", str(tmp_path),
                 env={"LANG3D_TRACEBACK": "1"})
    assert shown.returncode != 0 and "Traceback" in shown.stderr


def test_a_model_argument_that_comes_from_the_data_is_an_error_naming_it(tmp_path):
    result = _run("fit", "-c", "configs/text4point/finetune_s3dis.yaml", "--data.root", str(tmp_path),
                  "--model.class_names", "[wall, floor]")
    lines = _error_lines(result.stderr)
    assert result.returncode == 1
    assert lines[0].startswith("error: LinkedArgumentError") and "model.class_names" in lines[0], lines
    assert "S3DISDataModule's class_names" in lines[0] and "CLIP" not in result.stderr   # before any weights load


def test_linked_arguments_are_errors_only_where_the_model_takes_them_from_the_data():
    from jsonargparse import Namespace

    def config(model, data, **given):
        return Namespace(model=Namespace(class_path=model, init_args=Namespace(**given)),
                         data=Namespace(class_path=data, init_args=Namespace(root="/data")))

    detection = config("text4point.Text4PointDetection", "datamodules.ScanNetDetectionDataModule",
                       class_names=["chair"], mean_size=None, lr=0.1)
    assert linked_arguments_given(detection, detection) == [
        "model.class_names (it is ScanNetDetectionDataModule's class_names)",
        "model.mean_size (it is ScanNetDetectionDataModule's mean_size)"]
    assert linked_arguments_given(detection, config("text4point.Text4PointDetection",
                                                    "datamodules.ScanNetDetectionDataModule", lr=0.1)) == []
    # pre-training: ScanNet's frame pairs carry no class names, so the model's own are used
    pretraining = config("text4point.Text4PointPretraining", "datamodules.ScanNetPairsDataModule", class_names=["wall"],
                         voxel_size=0.05)
    assert linked_arguments_given(pretraining, pretraining) == []
    instance = config("text4point.Text4PointInstanceSegmentation", "datamodules.S3DISDataModule", voxel_size=0.1)
    assert linked_arguments_given(instance, instance) == ["model.voxel_size (it is S3DISDataModule's voxel_size)"]


def test_project_error_is_found_through_wrapping_exceptions():
    from lang3d.models.clip import CLIPLoadError, load_clip

    try:
        try:
            load_clip("no-such-model", None)
        except CLIPLoadError as inner:
            raise ValueError("Does not validate against any of the Union subtypes") from inner
    except ValueError as outer:
        found = project_error(outer)
    assert isinstance(found, CLIPLoadError) and "no-such-model" in str(found)
    assert project_error(ValueError("not ours")) is None


def test_missing_roots_are_found_in_nested_data_configs(tmp_path):
    from jsonargparse import Namespace

    def node(cls, **kw):
        return Namespace(class_path=cls, init_args=Namespace(**kw))

    data = node("pointbind.PointBindDataModule",
                alignment=node("datamodules.cap3d.Cap3DDataModule", root=str(tmp_path / "no_cap3d")),
                zeroshot=node("datamodules.modelnet40.ModelNet40DataModule", root=str(tmp_path)))
    assert missing_data_roots(data) == [f"data.alignment.root: {tmp_path / 'no_cap3d'} (Cap3DDataModule)"]
    as_settings = node("pointbind.PointBindDataModule",   # Point-Bind's parts are plain {class_path, init_args}
                       alignment={"class_path": "datamodules.cap3d.Cap3DDataModule",
                                  "init_args": {"root": str(tmp_path)}},
                       zeroshot={"class_path": "datamodules.modelnet40.ModelNet40DataModule",
                                 "init_args": {"root": str(tmp_path / "no_mn40")}})
    assert missing_data_roots(as_settings) == [f"data.zeroshot.root: {tmp_path / 'no_mn40'} (ModelNet40DataModule)"]
    builtin = node("datamodules.cap3d.Cap3DDataModule", root=str(tmp_path / "demo"), write_builtin_data=True)
    assert missing_data_roots(builtin) == []   # written by prepare_data
