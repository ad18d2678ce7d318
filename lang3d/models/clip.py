"""Frozen CLIP (open_clip) wrapper: loading, dense image features (Text4Point Eq. 1), text embeddings.

``load_clip`` registers the package's own open_clip model configs (``lang3d/models/clip_configs/*.json``, e.g.
``lang3d-tiny-RN`` for tests and demos) with open_clip; nothing is downloaded at import time.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from filelock import FileLock
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torch import nn

from lang3d.training.checkpoint import FrozenPretrained

CONFIG_DIR = Path(__file__).parent / "clip_configs"
PROJECT_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

PRETRAINED_TAGS: dict[str, dict[str, dict]] = {}
"""{model name: {tag: open_clip pretrained cfg}} for weights open_clip's own list lacks (e.g. for the project's
configs): ``hf_hub`` ("org/repo/[file]") or ``url``, optional ``quick_gelu``. ``load_clip`` looks here first."""


def pretrained_cfg(model_name: str, tag: str) -> dict:
    """The pretrained cfg of ``model_name``/``tag``: from ``PRETRAINED_TAGS``, else open_clip's; {} for neither."""
    return PRETRAINED_TAGS.get(model_name, {}).get(tag) or open_clip.get_pretrained_cfg(model_name, tag)


def register_model_configs() -> None:
    """Adds the project's open_clip model configs (``lang3d/models/clip_configs/*.json``, e.g. ``lang3d-tiny-RN``) to
    open_clip's registry with its public ``add_model_config``; idempotent. ``load_clip`` calls it."""
    if not set(PROJECT_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


class CLIPLoadError(RuntimeError):
    """A CLIP model or its weights could not be loaded."""


class CLIPWeightsUnavailable(CLIPLoadError):
    """Pretrained weights for an open_clip tag are not cached locally and cannot be downloaded."""


class CLIPWeightsFileError(CLIPLoadError):
    """A local weights file is missing, unreadable, or does not match the model architecture."""


def _offline() -> bool:
    """Hugging Face's offline switches (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) or ``LANG3D_OFFLINE``, read
    when called (huggingface_hub reads its own once, at import)."""
    return hf_constants.is_offline_mode() or any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LANG3D_OFFLINE"))


def _hub_cache(cache_dir: str | None) -> str:
    """The Hugging Face cache open_clip downloads hub weights into: ``cache_dir`` or huggingface_hub's default."""
    return cache_dir or hf_constants.HF_HUB_CACHE


def _hub_file_in_cache(cfg: dict, cache_dir: str | None) -> str | None:
    """Already-downloaded hub weights of an open_clip pretrained cfg (no network: ``local_files_only``), trying the
    safetensors file first as open_clip does; None when not cached."""
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    for name in ([HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []) + [filename]:
        try:
            return hf_hub_download(repo_id, name, cache_dir=_hub_cache(cache_dir), local_files_only=True)
        except Exception:  # huggingface_hub raises its own "not in the local cache" errors
            continue
    return None


def download_lock(model_name: str, tag: str, cache_dir: str | None = None) -> FileLock:
    """The inter-process lock file guarding the download of ``model_name``/``tag``, in ``cache_dir`` or else the
    Hugging Face cache (created with its folder).

    Processes that start together (DDP ranks on one node, or on several nodes sharing the cache's filesystem)
    take it in turn: the first downloads, the others wait and then find the weights cached. The lock is an OS
    file lock, released by the OS should its holder die."""
    folder = Path(_hub_cache(cache_dir)).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / re.sub(r"[^\w.-]", "_", f"lang3d-clip-{model_name}-{tag}.lock")))


def _resolve_tag(model_name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """Local weights path and pretrained cfg for ``model_name``/``tag``. Hub weights come from the Hugging Face
    cache; otherwise (and for URL tags) open_clip's ``download_pretrained`` finds or downloads them, one process
    at a time (``download_lock``). Offline (``HF_HUB_OFFLINE=1``) nothing is downloaded from the hub."""
    cfg = pretrained_cfg(model_name, tag)
    on_hub = bool(cfg.get("hf_hub"))
    where = (f"Hugging Face cache {_hub_cache(cache_dir)} (repo {cfg['hf_hub']})" if on_hub else
             f"open_clip's URL cache ({cache_dir or 'its default folder'}) for {cfg.get('url', '-')}")
    fix = (f"Download '{model_name}/{tag}' on a machine with internet (e.g. python -c \"import open_clip; "
           f"open_clip.create_model('{model_name}', pretrained='{tag}')\") and copy the cache here, or pass "
           f"pretrained: /path/to/{model_name}.pt (a local state dict / open_clip checkpoint / OpenAI archive). "
           f"Without network, set HF_HUB_OFFLINE=1 so that nothing is attempted.")

    def unavailable(reason: str) -> CLIPWeightsUnavailable:
        return CLIPWeightsUnavailable(f"CLIP weights for model '{model_name}' tag '{tag}' are not in the local "
                                      f"cache and cannot be downloaded ({reason}). Looked in: {where}. {fix}")

    cached = _hub_file_in_cache(cfg, cache_dir) if on_hub else None
    if cached:
        return cached, cfg
    if on_hub and _offline():
        raise unavailable("offline mode is set")
    with download_lock(model_name, tag, cache_dir):
        cached = _hub_file_in_cache(cfg, cache_dir) if on_hub else None  # another process may have downloaded it
        if cached:
            return cached, cfg
        try:
            return open_clip.download_pretrained(cfg, cache_dir=cache_dir), cfg
        except Exception as e:  # network / hub errors of any kind
            raise unavailable(f"download failed: {e}") from e


def _is_torchscript(path: str) -> bool:
    """True for TorchScript archives (the original OpenAI ``RN50.pt``), which need ``torch.jit.load``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _load_torchscript(model: nn.Module, path: str) -> None:
    """Copy the weights of a TorchScript archive (OpenAI's own format, fp16) into an open_clip model."""
    state = torch.jit.load(path, map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights
        state.pop(key, None)
    model.load_state_dict(state, strict=True)


def _create(model_name: str, path: str | None, cfg: dict | None) -> nn.Module:
    kwargs = {}
    if cfg:  # weights of a known tag: use its activation and preprocessing
        kwargs = dict(force_quick_gelu=bool(cfg.get("quick_gelu", False)), force_preprocess_cfg=cfg)
    if path is None:
        return open_clip.create_model(model_name)
    try:
        if not _is_torchscript(path):
            return open_clip.create_model(model_name, pretrained=path, **kwargs)
        model = open_clip.create_model(model_name, **kwargs)
        _load_torchscript(model, path)
        return model
    except Exception as e:
        raise CLIPWeightsFileError(
            f"CLIP weights file {path} could not be loaded into model '{model_name}' "
            f"(wrong architecture or not a state dict / open_clip checkpoint / TorchScript archive): {e}") from e


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` for every parameter; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_clip(model_name: str, pretrained: str | None = None, *, cache_dir: str | None = None):
    """Load a frozen open_clip model and its tokenizer.

    ``pretrained``: None/"" (random init), an open_clip tag (e.g. "openai"; must already be cached unless online),
    or a path to a local weights file. For OpenAI weights loaded from a file use a ``*-quickgelu`` model name
    (e.g. "RN50-quickgelu"); with a tag the activation is taken from the tag. ``cache_dir`` overrides
    open_clip's caches. Returns ``(model, tokenizer)``; the model is in eval mode with all parameters frozen.
    """
    register_model_configs()
    available = open_clip.list_models()
    if model_name not in available:
        raise CLIPLoadError(f"Unknown CLIP model '{model_name}'. Available: {', '.join(available)}")
    path, cfg = None, None
    if pretrained:
        pretrained = str(pretrained)
        if pretrained_cfg(model_name, pretrained):
            path, cfg = _resolve_tag(model_name, pretrained, cache_dir)
        elif os.path.isfile(pretrained):
            path = pretrained
        elif os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES):
            raise CLIPWeightsFileError(f"CLIP weights file {pretrained} does not exist.")
        else:
            tags = [*PRETRAINED_TAGS.get(model_name, {}), *open_clip.list_pretrained_tags_by_model(model_name)]
            raise CLIPLoadError(f"'{pretrained}' is neither a pretrained tag of '{model_name}' (tags: "
                                f"{', '.join(tags) or 'none'}) nor an existing weights file.")
    model = freeze(_create(model_name, path, cfg))
    return model, open_clip.get_tokenizer(model_name)


class CLIPImagePreprocess:
    """A CLIP visual tower's evaluation transform, open_clip's own (``image_transform_v2`` of ``preprocess_cfg``, an
    open_clip tower's ``visual.preprocess_cfg`` or the same keys for another tower: resize of the shorter side,
    bicubic, centre crop, mean / std normalisation), for image batches in any of the forms the pipelines hold:

    * float tensor [B,3,H,W] in [0,1];
    * uint8 tensor [B,H,W,3];
    * sequence of PIL images or uint8 [H,W,3] arrays.

    ``__call__`` returns normalised pixels [B,3,S,S] float32 (S: the tower's input size)."""

    def __init__(self, preprocess_cfg: Mapping):
        cfg = PreprocessCfg(**preprocess_cfg)
        self.transform = image_transform_v2(cfg, is_train=False)
        self.image_size = (cfg.size, cfg.size) if isinstance(cfg.size, int) else tuple(cfg.size)
        self.mean, self.std = tuple(cfg.mean), tuple(cfg.std)
        self.description = (f"size={self.image_size} mean={self.mean} std={self.std} "
                            f"resize={cfg.resize_mode}-{cfg.interpolation}+centre-crop (open_clip)")

    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.ndim == 4 and images.dtype == torch.uint8 and images.shape[-1] == 3:
                images = images.permute(0, 3, 1, 2).float() / 255.0
            elif not (images.ndim == 4 and images.shape[1] == 3 and images.is_floating_point()):
                raise ValueError(f"image tensor must be float [B,3,H,W] in [0,1] or uint8 [B,H,W,3], got "
                                 f"{tuple(images.shape)} {images.dtype}")
            return self.transform(images.float())
        pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)) if isinstance(im, np.ndarray) else im
               for im in images]
        if not pil or not all(isinstance(im, Image.Image) for im in pil):
            raise ValueError("images must be a float tensor [B,3,H,W], a uint8 tensor [B,H,W,3] or a non-empty "
                             "sequence of PIL images / uint8 [H,W,3] arrays")
        return torch.stack([self.transform(im) for im in pil])


def interpolate_grid_pos_embed(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Attention-pool positional embedding [1+g*g, C] (global first) -> [1+h*w, C], spatial part bicubic."""
    g = round((pos.shape[0] - 1) ** 0.5)
    if g * g != pos.shape[0] - 1:
        raise ValueError(f"positional embedding with {pos.shape[0] - 1} spatial entries is not a square grid")
    if (h, w) == (g, g):
        return pos
    grid = pos[1:].reshape(g, g, -1).permute(2, 0, 1)[None].float()
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(h * w, -1).to(pos.dtype)], dim=0)


class CLIPDenseImageEncoder(FrozenPretrained):
    """Frozen ResNet CLIP image tower returning all attention-pool outputs (Text4Point Eq. 1).

    ``[h, h_g] = MSA(concat(x, x_g))``: every one of the ``h*w + 1`` tokens (trunk features plus their mean,
    with positional embedding) queries all tokens using the pool's q/k/v/c_proj weights and heads.
    ``output_stride`` = 32; ``embed_dim`` = d (CLIP joint embedding width). Holds the visual tower only (``visual``;
    the text tower is not kept); always in eval mode, never in a checkpoint (``FrozenPretrained``).
    """

    output_stride = 32

    def __init__(self, model: nn.Module):
        visual = getattr(model, "visual", None)
        if not isinstance(visual, ModifiedResNet):
            raise TypeError(f"CLIPDenseImageEncoder needs a ResNet CLIP (ModifiedResNet visual tower), "
                            f"got {type(visual).__name__}")
        super().__init__(visual=visual)
        self.embed_dim = visual.output_dim
        cfg = getattr(visual, "preprocess_cfg", {})
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ResNet trunk: images [B,3,H,W] in [0,1] -> features [B,C,H//32,W//32] (C = 32*width)."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be float [B,3,H,W] in [0,1], got {tuple(images.shape)} {images.dtype}")
        if min(images.shape[-2:]) < self.output_stride:
            raise ValueError(f"images must be at least {self.output_stride} pixels a side, "
                             f"got {tuple(images.shape[-2:])}")
        v = self.visual
        x = ((images - self.mean) / self.std).to(v.conv1.weight.dtype)
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))

    def attention_pool_all(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1 on trunk features x [B,C,h,w] -> tokens [B,1+h*w,d]; token 0 is the global one."""
        pool = self.visual.attnpool
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                      # [B, hw, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)      # [B, 1+hw, C]
        tokens = tokens + interpolate_grid_pos_embed(pool.positional_embedding, h, w).to(tokens.dtype)
        heads = pool.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:                                # [B,T,C] -> [B,heads,T,C/heads]
            return t.view(b, -1, heads, c // heads).transpose(1, 2)

        q, k, v = split(pool.q_proj(tokens)), split(pool.k_proj(tokens)), split(pool.v_proj(tokens))
        out = F.scaled_dot_product_attention(q, k, v)                              # softmax(qk^T/sqrt(c/heads)) v
        return pool.c_proj(out.transpose(1, 2).reshape(b, -1, c))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B,3,H,W] float in [0,1] -> dict(dense=[B,d,H//32,W//32], global_=[B,d]); not normalised."""
        x = self.trunk(images)
        h, w = x.shape[-2:]
        tokens = self.attention_pool_all(x)
        dense = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        return {"dense": dense, "global_": tokens[:, 0]}


def class_prompts(class_names: list[str], template: str = "point cloud of {}.") -> list[str]:
    """One prompt per class name, e.g. ``"point cloud of chair."``."""
    if "{}" not in template:
        raise ValueError(f"prompt template must contain '{{}}' for the class name, got {template!r}")
    return [template.format(name) for name in class_names]


def text_token_states(text: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's text transformer on token embeddings x [K,L,width] (L <= context length, no positional
    embedding yet) -> per-token states [K,L,width] after ``ln_final``, not projected. ``text`` is an open_clip
    ``CLIP`` model or a ``CLIPTextTower`` (the same attribute names)."""
    length = x.shape[1]
    cast_dtype = text.transformer.get_cast_dtype()
    x = x.to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)
    return text.ln_final(text.transformer(x, attn_mask=text.attn_mask[:length, :length]))


def project_text(text: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's text projection on states [..., width] -> [..., d] (open_clip keeps it as a matrix or a Linear)."""
    return text.text_projection(x) if isinstance(text.text_projection, nn.Linear) else x @ text.text_projection


class CLIPTextTower(nn.Module):
    """The text tower's parts of an open_clip ``CLIP`` model, the same modules and tensors under open_clip's names
    (``token_embedding``, ``positional_embedding`` [L,width], ``transformer``, ``ln_final``, ``text_projection``,
    causal ``attn_mask`` [L,L]), without the visual tower."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)


class CLIPTextEncoder(FrozenPretrained):
    """Frozen CLIP text tower: texts -> [K,d] embeddings exactly as open_clip ``encode_text`` (NOT L2-normalised).

    ``encode_token_embeddings`` runs the frozen transformer on given token embeddings so that learnable
    prompt context (CoOp) can be inserted; gradients flow to those embeddings.

    Holds the text tower only (``model``: ``CLIPTextTower``; the visual tower is not kept, so a module that only
    embeds text never moves it to a device); always in eval mode, never in a checkpoint (``FrozenPretrained``).
    """

    def __init__(self, model: nn.Module, tokenizer):
        if not hasattr(model, "token_embedding") or getattr(model, "text_pool_type", None) != "argmax":
            raise TypeError(f"CLIPTextEncoder needs an open_clip CLIP model with the built-in text transformer "
                            f"and argmax (EOT) pooling, got {type(model).__name__}")
        super().__init__(model=CLIPTextTower(model))
        self.tokenizer = tokenizer
        self.embed_dim = model.text_projection.shape[-1] if not isinstance(model.text_projection, nn.Linear) \
            else model.text_projection.out_features

    @property
    def tower(self) -> nn.Module:
        """The module holding the weights the embeddings come from (``model``)."""
        return self.model

    @property
    def width(self) -> int:
        """Token embedding width of the text transformer."""
        return self.model.token_embedding.embedding_dim

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> token ids [K, context_length] int64 on the model's device."""
        return self.tokenizer(list(texts)).to(self.model.token_embedding.weight.device)

    @staticmethod
    def eot_index(tokens: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token (the largest id) per row: [K, L] -> [K] int64."""
        return tokens.argmax(dim=-1)

    def encode_token_embeddings(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings x [K,L,width] (L <= context length, no positional embedding yet) and EOT positions
        [K] -> text embeddings [K,d]. Not wrapped in no_grad (prompt learning backpropagates through it)."""
        m = self.model
        length = x.shape[1]
        if x.ndim != 3 or x.shape[2] != self.width or length > m.positional_embedding.shape[0]:
            raise ValueError(f"token embeddings must be [K, L<={m.positional_embedding.shape[0]}, {self.width}], "
                             f"got {tuple(x.shape)}")
        x = text_token_states(m, x)
        return project_text(m, x[torch.arange(x.shape[0], device=x.device), eot_index])

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        """texts (K strings) -> [K,d] text embeddings (unnormalised, like open_clip ``encode_text``)."""
        tokens = self.tokenize(texts)
        return self.encode_token_embeddings(self.model.token_embedding(tokens), self.eot_index(tokens))
