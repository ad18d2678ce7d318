"""TensorBoard's HParams dashboard: a run's hyper-parameters with its final metrics, so that runs compare side by
side."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

FINAL = "final/"
"""Prefix of the metrics written with the hyper-parameters (``final/val/miou``): their own scalar tags, so the
curves of ``val/miou`` etc. get no extra point."""


LIGHTNING_KEYS = ("_class_path", "_instantiator")
"""What Lightning and its CLI keep in ``hparams`` to rebuild a module from a checkpoint: not settings."""


def run_hyperparameters(trainer: L.Trainer, module: L.LightningModule) -> dict:
    """The module's and the datamodule's ``hparams_initial`` (the datamodule's win on a shared key, as in what
    Lightning logs at the start of fit), without ``LIGHTNING_KEYS``."""
    data = trainer.datamodule
    params = {**module.hparams_initial, **(data.hparams_initial if data is not None else {})}
    return {key: value for key, value in params.items() if key not in LIGHTNING_KEYS}


class HParamsSummary(L.Callback):
    """At the end of fit, of a ``validate`` run and of test, writes the run's hyper-parameters
    (``run_hyperparameters``) with the final value of each of ``metrics`` to every ``TensorBoardLogger``, through
    its public ``log_hyperparams(params, metrics, step)``. Each metric goes in as a scalar ``final/<name>``
    at the global step. The final value is the one ``trainer.callback_metrics`` holds: the last logged (an epoch's
    mean for epoch-level metrics, the last step's for step-level ones such as ``train/loss``).

    Args:
        metrics: logged metric names, e.g. ``[val/miou, test/miou, train/loss]``. Each stage writes those it logged
            (fit: ``val/miou``, ``train/loss``; test: ``test/miou``). A stage that logged none of them writes
            nothing and warns with the names it did log.

    TensorBoard reads the first summary of a log directory only (the CLI's fit and test runs log into their own
    version directories). So give the TensorBoardLogger ``default_hp_metric: false``: otherwise Lightning writes
    a summary with its placeholder ``hp_metric`` (-1) at the start of fit, and this one is not shown. The HParams
    dashboard takes its columns from one run's summary: compare runs of one pipeline (``--logdir runs/<run>``).
    """

    def __init__(self, metrics: list[str]):
        if not metrics or not all(isinstance(name, str) and name for name in metrics):
            raise ValueError(f"HParamsSummary: metrics must be a non-empty list of metric names, got {metrics!r}")
        self.metrics = list(metrics)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:   # a validate run, not fit's validation epochs
            self._write(trainer, pl_module, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logged = trainer.callback_metrics
        held = {FINAL + name: float(logged[name]) for name in self.metrics if name in logged}
        if not held:
            rank_zero_warn(f"HParamsSummary: {stage} logged none of {self.metrics}; it logged {sorted(logged)}")
            return
        params = run_hyperparameters(trainer, pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, held, step=trainer.global_step)
