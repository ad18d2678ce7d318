"""Point-BERT's pre-training checkpoint (``Point-BERT.pth``; lulutang0608/Point-BERT): ``{"base_model": state of
Point_BERT, "optimizer", "epoch", "metrics", "best_metrics"}`` (metrics may hold numpy scalars; some files use
``"model"`` instead of ``"base_model"``).

Kept: the query transformer ``transformer_q.*`` -> ``encoder.*`` (``pointbind.encoders.PointBERTEncoder``), as the
official fine-tuning loads it. Dropped: ``transformer_q.{cls_head,lm_head,mask_token}`` (pre-training heads),
the momentum encoder ``transformer_k.*``, the dVAE ``dvae.*`` and the MoCo queue. A leading ``module.``
(DataParallel) is removed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lang3d.convert import CheckpointKind, Conversion, Published, register, rename
from lang3d.convert.i2pmae import model_state
from lang3d.convert.point_encoders import pointbert_rules
from lang3d.training.checkpoint import NUMPY_SCALAR_GLOBALS

PRETRAINING_ONLY = ("transformer_q.cls_head.", "transformer_q.lm_head.", "transformer_q.mask_token")


def _state_key(raw: Any) -> str | None:
    if isinstance(raw, Mapping):
        for key in ("base_model", "model"):
            if isinstance(raw.get(key), Mapping) and any(
                    k.removeprefix("module.").startswith("transformer_q.") for k in raw[key]):
                return key
    return None


def convert_pretrain(raw: Mapping[str, Any], source: str) -> Conversion:
    kept, dropped = rename(model_state(raw, _state_key(raw)), pointbert_rules("transformer_q.", "encoder."), source,
                           drop=lambda k: not k.startswith("transformer_q.") or k.startswith(PRETRAINING_ONLY))
    return Conversion("pointbert-pretrain", source, kept, dropped, meta={"encoder": "pointbert"})


KIND = register(
    CheckpointKind("pointbert-pretrain", "Point-BERT's pre-training checkpoint (base_model: transformer_q / "
                   "transformer_k / dvae)", lambda raw: _state_key(raw) is not None, convert_pretrain,
                   NUMPY_SCALAR_GLOBALS),
    Published("pointbert_pretrain", "pointbert-pretrain", "Point-BERT.pth",
              "https://cloud.tsinghua.edu.cn/f/202b29805eea45d7be92/?dl=1"))
