"""``SampleMeans`` in one process through Lightning's ``validate``: per-sample means weighted by each batch's
samples, a value some batches lack averaged over the batches that give it, a value no batch gives not logged, NaN
kept. Under DDP (uneven and empty shards against one process): tests/test_ddp_edge_cases.py."""
import math

import lightning as L
import pytest
import torch

from lang3d.training.sample_means import SampleMeans

BATCHES = [  # (samples, values): batch means over the batch's samples
    (2, {"loss": 1.0, "acc": 0.5}),
    (0, {}),                              # an empty shard's batch
    (1, {"loss": 4.0}),                   # no "acc" for this batch
    (3, {"loss": 2.0, "acc": 1.0}),
]


class Means(L.LightningModule):
    def __init__(self, nan: bool = False):
        super().__init__()
        self.val_means = SampleMeans(("loss", "acc", "never"))
        self.nan = nan

    def validation_step(self, batch, batch_idx):
        samples, values = BATCHES[int(batch)]
        values = {k: torch.tensor(math.nan if self.nan and k == "acc" else v) for k, v in values.items()}
        self.val_means.update(values, samples)

    def on_validation_epoch_end(self):
        self.logged_samples = self.val_means.log(self, "val/")


def validate(module: Means) -> dict:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return trainer.validate(module, torch.arange(len(BATCHES)), verbose=False)[0]


def test_means_weigh_every_value_by_the_samples_of_the_batches_that_give_it():
    module = Means()
    for _ in range(2):   # the second epoch starts from nothing
        logged = validate(module)
        assert logged.keys() == {"val/loss", "val/acc"}   # "never": no batch gave it
        assert logged["val/loss"] == pytest.approx((2 * 1.0 + 4.0 + 3 * 2.0) / 6)
        assert logged["val/acc"] == pytest.approx((2 * 0.5 + 3 * 1.0) / 5)
        assert module.logged_samples == 6
    assert math.isnan(validate(Means(nan=True))["val/acc"])
    with pytest.raises(ValueError, match=r"values \['other'\] are not among its names"):
        SampleMeans(("loss",)).update({"other": torch.tensor(1.0)}, 1)
