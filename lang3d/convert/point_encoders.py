"""Tensor names of the official Point-BERT and I2P-MAE encoders -> ``pointbind.encoders`` (same tensors).

Official names are relative to the encoder (``PointTransformer`` / ``PointTransformer_BIND`` of Point-BERT,
``I2P_MAE_BIND`` or the ``I2P_MAE`` pre-training model of I2P-MAE); project names are relative to
``PointBERTEncoder`` / ``I2PMAEEncoder``. Transformer blocks: official ``norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2`` -> ``norm1, qkv, proj, norm2, mlp.0, mlp.2``.
"""
from __future__ import annotations

import re

_PARAM = r"(weight|bias)"
_CONV_BN = r"(\d+\.(?:weight|bias|running_mean|running_var|num_batches_tracked))"


def _block_rules(official: str, project: str) -> list[tuple[str, str]]:
    """Rules for transformer blocks under ``official`` (a regex with one group per index) -> ``project``."""
    n = official.count("(")
    return [(rf"{official}\.(norm1|norm2)\.{_PARAM}", rf"{project}.\{n + 1}.\{n + 2}"),
            (rf"{official}\.attn\.(qkv|proj)\.{_PARAM}", rf"{project}.\{n + 1}.\{n + 2}"),
            (rf"{official}\.mlp\.fc1\.{_PARAM}", rf"{project}.mlp.0.\{n + 1}"),
            (rf"{official}\.mlp\.fc2\.{_PARAM}", rf"{project}.mlp.2.\{n + 1}")]


def pointbert_rules(prefix: str = "", target: str = "") -> list[tuple[str, str]]:
    """Point-BERT ``PointTransformer`` names under ``prefix`` -> ``PointBERTEncoder`` names under ``target``."""
    p = re.escape(prefix)
    return [(rf"{p}encoder\.first_conv\.{_CONV_BN}", rf"{target}tokenizer.first.\1"),
            (rf"{p}encoder\.second_conv\.{_CONV_BN}", rf"{target}tokenizer.second.\1"),
            (rf"{p}reduce_dim\.{_PARAM}", rf"{target}reduce.\1"),
            (rf"{p}(cls_token|cls_pos)", rf"{target}\1"),
            (rf"{p}pos_embed\.([02])\.{_PARAM}", rf"{target}pos_embed.\1.\2"),
            *_block_rules(rf"{p}blocks\.blocks\.(\d+)", rf"{target}blocks.\1"),
            (rf"{p}norm\.{_PARAM}", rf"{target}norm.\1")]


def i2pmae_rules(prefix: str = "", target: str = "", with_norm: bool = True) -> list[tuple[str, str]]:
    """I2P-MAE ``h_encoder`` (+ the final ``norm`` when ``with_norm``) names under ``prefix`` -> ``I2PMAEEncoder``
    names under ``target``."""
    p = re.escape(prefix)
    rules = [(rf"{p}h_encoder\.token_embed\.(\d+)\.first_conv\.{_CONV_BN}", rf"{target}embed.\1.first.\2"),
             (rf"{p}h_encoder\.token_embed\.(\d+)\.second_conv\.{_CONV_BN}", rf"{target}embed.\1.second.\2"),
             (rf"{p}h_encoder\.encoder_pos_embeds\.(\d+)\.([02])\.{_PARAM}", rf"{target}pos_embed.\1.\2.\3"),
             *_block_rules(rf"{p}h_encoder\.encoder_blocks\.(\d+)\.blocks\.(\d+)", rf"{target}stages.\1.\2")]
    if with_norm:
        rules.append((rf"{p}norm\.{_PARAM}", rf"{target}norm.\1"))
    return rules
