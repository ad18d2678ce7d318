"""PointBindDataModule: its parts are plain {class_path, init_args} settings, checked at once, built on use."""
import pytest

from datamodules.cap3d import Cap3DDataModule
from datamodules.modelnet40 import ModelNet40DataModule
from datamodules.synthetic.modelnet40 import generate_modelnet40
from pointbind.data import DataSettingsError, PointBindDataModule

CAP3D = "datamodules.cap3d.Cap3DDataModule"
MN40 = "datamodules.modelnet40.ModelNet40DataModule"


def test_parts_are_built_from_their_own_settings(tmp_path):
    generate_modelnet40(tmp_path / "m", train_per_class=1, test_per_class=1, points=64, formats=("resampled",))
    dm = PointBindDataModule({"class_path": CAP3D, "init_args": {"root": str(tmp_path / "c"), "batch_size": 3},
                              "num_points": 128},        # a command-line override lands beside class_path
                             {"class_path": MN40, "init_args": {"root": str(tmp_path / "m"), "num_points": 64}})
    assert isinstance(dm.alignment, Cap3DDataModule) and isinstance(dm.zeroshot, ModelNet40DataModule)
    assert dm.alignment.hparams.batch_size == 3 and dm.alignment.hparams.num_points == 128
    assert dm.zeroshot.hparams.num_points == 64 and "class_path" not in dm.zeroshot.hparams
    assert dm.alignment is dm.alignment                   # built once
    assert dm.hparams["alignment"]["class_path"] == CAP3D


def test_bad_settings_are_errors_naming_the_key(tmp_path):
    with pytest.raises(DataSettingsError, match="data.alignment.init_args: Cap3DDataModule takes no argument rooot"):
        PointBindDataModule({"class_path": CAP3D, "init_args": {"rooot": str(tmp_path)}})
    with pytest.raises(DataSettingsError, match="data.zeroshot.class_path: cannot import"):
        PointBindDataModule({"class_path": CAP3D, "init_args": {"root": "x"}}, {"class_path": "nowhere.Nothing"})
    with pytest.raises(DataSettingsError, match="is not a LightningDataModule"):
        PointBindDataModule({"class_path": "pointbind.PointBindAlignment"})
    with pytest.raises(DataSettingsError, match="data.alignment must be"):
        PointBindDataModule({"root": "x"})


def test_built_datamodules_work_from_python(tmp_path):
    cap3d = Cap3DDataModule(str(tmp_path))
    dm = PointBindDataModule(cap3d, None)
    assert dm.alignment is cap3d and dm.zeroshot is None and dm.prompt_names is None
