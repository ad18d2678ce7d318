"""lang3d.visual.hparams.HParamsSummary: a small regression trained, validated and tested by Lightning writes
TensorBoard event files whose HParams plugin data name the run's hyper-parameters and the chosen metrics, whose
``final/*`` values equal the metrics' last logged values and the metrics recomputed from the trained model; no
placeholder ``hp_metric``. Read back with TensorBoard's own event reader and HParams metadata parsers."""
import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lang3d.visual.hparams import FINAL, HParamsSummary

REPO = Path(__file__).resolve().parents[1]


class Regression(L.LightningModule):
    """y = x w + b by SGD on the mean squared error; logs train/loss per step, val/mse and test/mse per epoch."""

    def __init__(self, lr: float = 0.05, features: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(features, 1)

    def mse(self, batch) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.linear(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.mse(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/mse", self.mse(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/mse", self.mse(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Lines(L.LightningDataModule):
    """Noisy samples of one linear function; validation and test sets are one batch each."""

    def __init__(self, batch_size: int = 8, noise: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 + noise * torch.randn(96, 1, generator=g)
        self.sets = {"train": TensorDataset(x[:64], y[:64]), "val": TensorDataset(x[64:80], y[64:80]),
                     "test": TensorDataset(x[80:], y[80:])}

    def train_dataloader(self):
        return DataLoader(self.sets["train"], batch_size=self.hparams.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(self.sets["val"], batch_size=len(self.sets["val"]))

    def test_dataloader(self):
        return DataLoader(self.sets["test"], batch_size=len(self.sets["test"]))


def trainer(log_dir: Path, metrics: list[str], max_epochs: int = 3) -> L.Trainer:
    logger = TensorBoardLogger(log_dir, name="tb", default_hp_metric=False)
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, log_every_n_steps=1, logger=logger,
                     callbacks=[HParamsSummary(metrics)], enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False)


def events(trainer: L.Trainer) -> EventAccumulator:
    accumulator = EventAccumulator(trainer.logger.log_dir)
    accumulator.Reload()
    return accumulator


def hparams_summary(accumulator: EventAccumulator):
    """(metric tags of the experiment, the session's hyper-parameters) from the HParams plugin data."""
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    session = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    return {m.name.tag for m in experiment.metric_infos}, session.hparams


def recomputed_mse(model: Regression, data: TensorDataset) -> float:
    with torch.no_grad():
        return float(model.mse(data.tensors))


def test_fit_then_test_write_the_hyperparameters_with_the_final_metrics(tmp_path):
    model, data = Regression(), Lines()
    fit = trainer(tmp_path / "fit", ["val/mse", "train/loss", "test/mse"])
    fit.fit(model, data)
    found = events(fit)
    tags, hparams = hparams_summary(found)
    assert tags == {"final/val/mse", "final/train/loss"}          # test/mse: not logged by fit
    assert hparams["lr"].number_value == pytest.approx(0.05) and hparams["features"].number_value == 3
    assert hparams["batch_size"].number_value == 8 and hparams["noise"].number_value == pytest.approx(0.1)
    scalars = set(found.Tags()["scalars"])
    assert "hp_metric" not in scalars
    for name in ("val/mse", "train/loss"):
        [final] = found.Scalars(FINAL + name)
        assert final.step == fit.global_step == 24   # 3 epochs of 8 batches
        assert final.value == found.Scalars(name)[-1].value, name   # the last logged value
    # the final validation error is the trained model's error on the validation set
    assert found.Scalars("final/val/mse")[0].value == pytest.approx(recomputed_mse(model, data.sets["val"]), rel=1e-5)
    assert found.Scalars("final/val/mse")[0].value < 0.25 * found.Scalars("train/loss")[0].value   # it learnt

    test = trainer(tmp_path / "test", ["val/mse", "train/loss", "test/mse"])
    test.test(model, data)
    found = events(test)
    tags, hparams = hparams_summary(found)
    assert tags == {"final/test/mse"} and hparams["lr"].number_value == pytest.approx(0.05)
    [final] = found.Scalars("final/test/mse")
    assert final.value == pytest.approx(recomputed_mse(model, data.sets["test"]), rel=1e-5)
    assert final.value == found.Scalars("test/mse")[-1].value


def test_a_validate_run_writes_its_metrics_and_fits_validation_epochs_do_not(tmp_path):
    model, data = Regression(), Lines()
    validate = trainer(tmp_path, ["val/mse"])
    validate.validate(model, data)
    tags, _ = hparams_summary(events(validate))
    assert tags == {"final/val/mse"}
    [final] = events(validate).Scalars("final/val/mse")
    assert final.value == pytest.approx(recomputed_mse(model, data.sets["val"]), rel=1e-5)
    fit = trainer(tmp_path / "fit", ["val/mse"], max_epochs=2)
    fit.fit(model, data)
    assert len(events(fit).Scalars("final/val/mse")) == 1   # at the end of fit only, not after every validation


def test_no_chosen_metric_logged_warns_and_writes_no_summary(tmp_path):
    fit = trainer(tmp_path, ["val/miou"], max_epochs=1)
    with pytest.warns(UserWarning, match=r"fit logged none of \['val/miou'\]; it logged \[.*'val/mse'"):
        fit.fit(Regression(), Lines())
    with pytest.raises(KeyError):   # no HParams plugin data at all
        events(fit).PluginTagToContent(metadata.PLUGIN_NAME)
    with pytest.raises(ValueError, match="non-empty list of metric names"):
        HParamsSummary([])


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_shipped_tensorboard_config_turns_the_placeholder_off_and_names_final_metrics():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    with_logger = 0
    for path in configs:
        trainer_config = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        logger = trainer_config.get("logger")
        if isinstance(logger, dict) and logger["class_path"].endswith("TensorBoardLogger"):
            with_logger += 1
            assert logger["init_args"]["default_hp_metric"] is False, path
        for callback in trainer_config.get("callbacks") or []:
            if callback["class_path"] == "lang3d.visual.hparams.HParamsSummary":
                assert callback["init_args"]["metrics"], path
        predicting = any(issubclass(import_class(c["class_path"]), BasePredictionWriter)
                         for c in trainer_config.get("callbacks") or [])   # no metric to summarise
        if "callbacks" in trainer_config and trainer_config.get("logger") not in (False, None) and not predicting:
            assert "lang3d.visual.hparams.HParamsSummary" in [c["class_path"] for c in trainer_config["callbacks"]], \
                f"{path}: its callbacks replace the base config's, HParamsSummary included"
    assert with_logger >= 10
