"""Prompts + conditioning images for ``lightning predict`` with ``SEPEFineTuning``.

Prompts come from a list or a UTF-8 text file (one prompt per line; blank lines and lines starting with '#' are
skipped); ``images`` gives one image path per prompt, or a single image shared by all prompts. Batches:
``prompt`` [B] strings, ``image`` [B] uint8 [H,W,3] arrays, ``name`` [B] output stems ``NNNN_<prompt words>``, and
``sampling``, the generation request ({"steps", "guidance_scale", "upsampler_guidance_scale"}). The clouds are
written by ``sepe.writers.GeneratedCloudWriter``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lang3d.data.image_files import read_image
from lang3d.models.point_e.cloud_files import slug


class PromptFileError(ValueError):
    """Prompts / images that cannot be used; the message names the file at fault."""


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file, one per line (blank and '#' lines skipped); an empty or missing file is an error."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise PromptFileError(f"prompts file {path} holds no prompt")
    return prompts


class _Prompts(Dataset):
    def __init__(self, prompts: list[str], images: list[Path]):
        self.prompts, self.images = prompts, images

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": self.prompts[i], "image": read_image(self.images[i]),
                "name": f"{i:04d}_{slug(self.prompts[i])}"}


def _collate(samples: list[dict], sampling: dict) -> dict:
    return {**{key: [s[key] for s in samples] for key in ("prompt", "image", "name")}, "sampling": dict(sampling)}


class SEPEPromptsDataModule(L.LightningDataModule):
    """Predict-only data: ``prompts`` (list) or ``prompts_file``, and ``images`` (one path per prompt, or one),
    with the generation request every batch carries (``sampling``): Karras ``steps``, guidance scales of the base
    and upsampler stages (None: the checkpoint's)."""

    def __init__(self, images: list[str], prompts: list[str] | None = None, prompts_file: str | None = None,
                 batch_size: int = 1, num_workers: int = 0, steps: int = 64, guidance_scale: float | None = None,
                 upsampler_guidance_scale: float | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.sampling = {"steps": steps, "guidance_scale": guidance_scale,
                         "upsampler_guidance_scale": upsampler_guidance_scale}
        if (prompts is None) == (prompts_file is None):
            raise PromptFileError("give exactly one of prompts and prompts_file")
        self.prompts = list(prompts) if prompts is not None else read_prompts(prompts_file)
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise PromptFileError(f"prompts must be non-empty strings, got {self.prompts!r}")
        paths = [Path(p) for p in ([images] if isinstance(images, str) else images)]
        if len(paths) == 1:
            paths = paths * len(self.prompts)
        source = prompts_file or "the prompts list"
        if len(paths) != len(self.prompts):
            raise PromptFileError(f"{len(self.prompts)} prompts in {source} but {len(paths)} images: give one image "
                                  f"per prompt, or one for all")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise PromptFileError(f"conditioning images do not exist: {', '.join(missing)}")
        self.images = paths

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Prompts(self.prompts, self.images), batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=partial(_collate, sampling=self.sampling))
