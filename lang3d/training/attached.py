"""The Trainer a LightningModule is attached to, asked through Lightning's public ``trainer`` property."""
from __future__ import annotations

import lightning as L


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """``module.trainer``, or None when the module is used on its own (Lightning's property raises then)."""
    try:
        return module.trainer
    except RuntimeError:
        return None
