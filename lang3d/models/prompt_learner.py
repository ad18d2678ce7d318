"""Class text embeddings t ∈ R^{K×d} for fine-tuning (Text4Point Sec. 3.4, Table 6), three interchangeable kinds.

* ``PromptLearner`` ("learned"): CoOp (Zhou et al. 2022) — learnable context vectors shared by all classes in
  front of each class name, run through the frozen CLIP text transformer.
* ``FixedPrompts`` ("fixed"): hand-made prompts, e.g. "point cloud of [cls].", embedded once.
* ``RandomClassEmbeddings`` ("random"): learnable random vectors instead of text (the paper's Table 6 ablation).

All three are ``nn.Module``s with ``forward() -> [K, d]`` (unnormalised), ``num_classes`` and ``embed_dim``;
``build_class_embeddings`` picks one by name. No frozen CLIP weight is ever part of their ``state_dict``.
"""
from __future__ import annotations

import torch
from torch import nn

from lang3d.models.clip import CLIPTextEncoder, class_prompts

PROMPT_KINDS = ("learned", "fixed", "random")


def _check_class_names(class_names) -> list[str]:
    names = list(class_names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"class_names must be a non-empty list of non-empty strings, got {class_names!r}")
    return names


class PromptLearner(nn.Module):
    """CoOp prompts: class k -> ``[SOS] ctx_1 .. ctx_n [tokens of "<name_k>."] [EOT]`` -> frozen text tower -> [d].

    Args:
        text_encoder: the frozen CLIP text tower, held as the submodule ``text_encoder``.
        class_names: the K class names, used verbatim.
        n_ctx: number of learnable context vectors (paper: 8). Default 8, or the token count of ``ctx_init``.
        ctx_init: optional phrase (e.g. "point cloud of") whose token embeddings initialise the context;
            otherwise the context is drawn from normal(0, 0.02).

    State: only ``ctx`` [n_ctx, width] trains and is saved: the text encoder is a ``FrozenPretrained`` submodule
    (``requires_grad=False``, always in eval mode, never in a state dict or checkpoint). The frozen token embeddings
    of [SOS] (``prefix`` [K, 1, width]) and of the class name, ".", [EOT] and padding (``suffix``
    [K, L-1-n_ctx, width], L = CLIP's context length) are non-persistent buffers snapshotted at construction.

    Caching rule: in train mode every call recomputes (with gradients to ``ctx``). In eval mode the first call
    computes the embeddings without gradients and later calls return that same tensor, as long as ``ctx`` holds
    the same values on the same device in the same dtype as when they were computed (compared with a copy kept
    for that). Any change of ``ctx``'s values (optimizer step, ``load_state_dict``, in-place writes, through
    ``ctx.data`` too), replacing it by other values, ``train()``, or moving/casting the module drops the cache.
    Do not modify the returned tensor in place.

    Device and dtype: ``.to()``, ``.cuda()``, ``.double()`` etc. on this module (or any module owning it) apply to
    the text encoder as to any submodule; it holds CLIP's text tower only.
    """

    def __init__(self, text_encoder: CLIPTextEncoder, class_names: list[str], n_ctx: int | None = None,
                 ctx_init: str | None = None):
        super().__init__()
        if not isinstance(text_encoder, CLIPTextEncoder):
            raise TypeError("PromptLearner needs a lang3d.models.clip.CLIPTextEncoder, "
                            f"got {type(text_encoder).__name__}")
        self.class_names = _check_class_names(class_names)
        self.text_encoder = text_encoder
        embedding = text_encoder.model.token_embedding
        with torch.no_grad():
            if ctx_init is not None:
                phrase = " ".join(ctx_init.split())
                init_tokens = text_encoder.tokenize([phrase])
                n_init = int(text_encoder.eot_index(init_tokens)[0]) - 1
                if n_init < 1:
                    raise ValueError(f"ctx_init {ctx_init!r} has no tokens")
                if n_ctx is not None and n_ctx != n_init:
                    raise ValueError(f"n_ctx={n_ctx} but ctx_init {ctx_init!r} has {n_init} tokens; "
                                     f"leave n_ctx unset to use the phrase's token count")
                n_ctx, placeholder = n_init, phrase
                ctx = embedding(init_tokens)[0, 1:1 + n_ctx].clone()
            else:
                n_ctx = 8 if n_ctx is None else int(n_ctx)
                if n_ctx < 1:
                    raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
                placeholder = " ".join(["X"] * n_ctx)
                ctx = torch.empty(n_ctx, text_encoder.width, dtype=embedding.weight.dtype,
                                  device=embedding.weight.device).normal_(0.0, 0.02)
            self.n_ctx = n_ctx
            tokens = self._tokenize([f"{placeholder} {name}." for name in self.class_names])
            eot = text_encoder.eot_index(tokens)
            full = embedding(tokens)
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("prefix", full[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", full[:, 1 + n_ctx:].clone(), persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.embed_dim = text_encoder.embed_dim
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (key, copy of ctx, embeddings)

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> token ids [K, L]; raises if a prompt does not fit into the context length L."""
        enc = self.text_encoder
        length = enc.model.positional_embedding.shape[0]
        longer = enc.tokenizer(prompts, context_length=length + 1)
        too_long = [p for p, row in zip(prompts, longer) if row[length] != 0]
        if too_long:
            raise ValueError(f"prompts longer than CLIP's context length {length} tokens (with n_ctx={self.n_ctx}"
                             f" context tokens): {too_long[:3]}")
        return enc.tokenize(prompts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train(self, mode: bool = True) -> "PromptLearner":
        self._cache = None
        return super().train(mode)

    def _embed(self) -> torch.Tensor:
        k = self.prefix.shape[0]
        x = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(k, -1, -1), self.suffix], dim=1)
        return self.text_encoder.encode_token_embeddings(x, self.eot)

    def forward(self) -> torch.Tensor:
        """-> text embeddings [K, d] (unnormalised), in the order of ``class_names``."""
        if self.training:
            return self._embed()
        ctx = self.ctx.detach()
        key = (ctx.device, ctx.dtype, ctx.shape)
        if self._cache is None or self._cache[0] != key or not torch.equal(self._cache[1], ctx):
            with torch.no_grad():
                self._cache = (key, ctx.clone(), self._embed())
        return self._cache[2]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, n_ctx={self.n_ctx}, embed_dim={self.embed_dim}"


class FixedPrompts(nn.Module):
    """Hand-made prompts ``template.format(name)`` embedded once by the frozen text tower at construction.

    ``forward() -> [K, d]`` returns the non-persistent buffer ``embeddings`` (so it follows ``.to()`` and stays out
    of checkpoints); the text encoder is not kept.
    """

    def __init__(self, text_encoder: CLIPTextEncoder, class_names: list[str], template: str = "point cloud of {}."):
        super().__init__()
        self.class_names = _check_class_names(class_names)
        self.template = template
        self.register_buffer("embeddings", text_encoder(class_prompts(self.class_names, template)), persistent=False)
        self.embed_dim = text_encoder.embed_dim

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self) -> torch.Tensor:
        """-> [K, d] text embeddings (unnormalised)."""
        return self.embeddings

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, template={self.template!r}, embed_dim={self.embed_dim}"


class RandomClassEmbeddings(nn.Module):
    """Learnable class vectors ``weight`` [K, d] drawn from normal(0, 0.02): no language (Table 6 ablation)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        self.weight = nn.Parameter(torch.empty(num_classes, dim).normal_(0.0, 0.02))
        self.embed_dim = dim

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self) -> torch.Tensor:
        """-> [K, d]."""
        return self.weight

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embed_dim={self.embed_dim}"


def build_class_embeddings(kind: str, text_encoder: CLIPTextEncoder, class_names: list[str],
                           **options) -> nn.Module:
    """``kind`` in PROMPT_KINDS -> PromptLearner ("learned": options n_ctx, ctx_init), FixedPrompts ("fixed":
    option template) or RandomClassEmbeddings ("random": K = len(class_names), d = the encoder's embed_dim)."""
    if kind == "learned":
        return PromptLearner(text_encoder, class_names, **options)
    if kind == "fixed":
        return FixedPrompts(text_encoder, class_names, **options)
    if kind == "random":
        if options:
            raise TypeError(f"class embeddings 'random' take no options, got {sorted(options)}")
        return RandomClassEmbeddings(len(_check_class_names(class_names)), text_encoder.embed_dim)
    raise ValueError(f"unknown class embedding kind {kind!r}; expected one of {PROMPT_KINDS}")
