"""Checkpoints: frozen pretrained networks (CLIP) held by modules but left out of them, reading untrusted checkpoint
files safely, and loading pretrained tensors by name with a report of what was loaded."""
from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class _AllTensors(OrderedDict):
    """A state-dict destination asking for every tensor, those ``keep_out_of_state_dict`` hides included."""


def _drop_entries(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post hook: removes the module's entries (every key under its ``prefix``)."""
    if not isinstance(state_dict, _AllTensors):
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]


def _fill_absent(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                 missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """Load-state-dict pre hook: each of the module's tensors the state dict lacks is given as itself (torch skips
    copying a tensor onto itself); tensors the state dict holds are loaded as usual."""
    for key, tensor in module.state_dict(destination=_AllTensors(), prefix=prefix, keep_vars=True).items():
        state_dict.setdefault(key, tensor)


def keep_out_of_state_dict(module: nn.Module) -> nn.Module:
    """Leave ``module``'s tensors out of every state dict (its own and that of any module holding it, at any depth:
    so out of Lightning checkpoints), and let a state dict without them load: an absent tensor keeps its value,
    while any other missing or unexpected tensor is still an error. Uses torch's public state-dict hooks on this
    instance; the module stays a registered submodule (``.to()``, ``named_modules``). Returns ``module``.

    For networks re-read from their own files (frozen pretrained weights); ``FrozenPretrained`` builds on it."""
    module.register_state_dict_post_hook(_drop_entries)
    module.register_load_state_dict_pre_hook(_fill_absent)
    return module


class FrozenPretrained(nn.Module):
    """Frozen pretrained networks owned by a module (a CLIP tower, point-e's evaluation PointNet++): registered
    submodules (``.to()``, ``.cuda()``, ``named_modules`` see them), every parameter ``requires_grad=False``, always
    in eval mode (``train()`` is ignored, so BatchNorm statistics never move), and never in a state dict or a
    checkpoint (``keep_out_of_state_dict``).

    ``FrozenPretrained(name=network, ...)`` holds each network under its name (and freezes it in place); the CLIP
    encoders subclass it, passing the towers they use."""

    def __init__(self, **networks: nn.Module):
        super().__init__()
        for name, network in networks.items():
            self.add_module(name, network.requires_grad_(False))
        self.train(False)
        keep_out_of_state_dict(self)

    def train(self, mode: bool = True) -> "FrozenPretrained":
        """Ignores ``mode``: stays in eval mode."""
        return super().train(False)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not fit the module they are loaded into."""


class UnsafeCheckpointError(CheckpointMismatchError):
    """A checkpoint file pickles objects other than tensors, containers, numbers, strings and the types the
    caller allowed; it is not unpickled (that could run arbitrary code)."""


_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor (numpy.core.multiarray.scalar)

# What training scripts commonly pickle next to the weights: numpy scalars (a metric such as an SVM accuracy)
# under numpy 1.x and 2.x module names, with the dtypes they name. Plain data; nothing here runs code.
NUMPY_SCALAR_GLOBALS: tuple[Callable | tuple[Callable, str], ...] = (
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"), (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"), np.dtype,
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)))


def safe_load(path: str | Path, allowed_globals: Sequence[Callable | tuple[Callable, str]] = (),
              mmap: bool = True) -> Any:
    """Read a checkpoint file as untrusted input: ``torch.load(..., weights_only=True)`` on CPU, allowing besides
    tensors and plain containers exactly ``allowed_globals`` (``torch.serialization.safe_globals``).

    With ``mmap`` (and a zip-format file, what ``torch.save`` writes since PyTorch 1.6) tensors are memory-mapped,
    so those the caller never touches (ImageBind's 1.2 B parameters in a Point-Bind release) are never read.
    A file that pickles anything else raises ``UnsafeCheckpointError`` naming the file and the types."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    zipped = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as err:
        types = _unsafe_globals(path, allowed_globals) if zipped else []
        if not types:  # a pre-1.6 (non-zip) file: torch's message names the first refused global
            types = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
        named = ", ".join(types) if types else str(err).splitlines()[0]
        raise UnsafeCheckpointError(f"{path} pickles objects that safe loading does not allow ({named}); it was not "
                                    "unpickled. Only tensors, containers, numbers and strings are read from "
                                    "downloaded checkpoints.") from err
    except Exception as err:
        raise CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint: {err}") from err


def _unsafe_globals(path: Path, allowed: Sequence[Callable | tuple[Callable, str]]) -> list[str]:
    """The pickled types of ``path`` that neither torch nor ``allowed`` permit (read without unpickling)."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a damaged archive: the unpickling error itself is reported
        return []


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict",
                     may_be_missing: Sequence[str] = (), refused: Mapping[str, str] | None = None,
                     prefix: str = "") -> None:
    """The project's one state-dict check: raises CheckpointMismatchError naming ``source`` and listing every
    problem between ``state`` and ``module.state_dict()``: ``missing tensor 'k' (model [..])`` (unless ``k`` is in
    ``may_be_missing``), ``unexpected tensor 'k' (checkpoint [..])``, ``tensor 'k': checkpoint [..] vs model [..]``,
    and every tensor of ``state`` named in ``refused`` (with the reason given there). Names in messages carry
    ``prefix`` (as in the file)."""
    expected, refused, allowed = module.state_dict(), refused or {}, set(may_be_missing)
    problems = [f"missing tensor '{prefix}{k}' (model {list(v.shape)})" for k, v in expected.items()
                if k not in state and k not in allowed]
    problems += [f"unexpected tensor '{prefix}{k}' (checkpoint {list(v.shape)})" for k, v in state.items()
                 if k not in expected]
    problems += [f"unexpected tensor '{prefix}{k}' ({refused[k]})" for k in state if k in expected and k in refused]
    problems += [f"tensor '{prefix}{k}': checkpoint {list(v.shape)} vs model {list(expected[k].shape)}"
                 for k, v in state.items() if k in expected and k not in refused and v.shape != expected[k].shape]
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(module).__name__} "
                                      f"({len(problems)} problems): " + "; ".join(problems))


@dataclass
class LoadReport:
    """What ``load_pretrained_weights`` did, tensor name by tensor name (names relative to the module)."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # allowed shape mismatches (e.g. a new task head)
    missing: list[str] = field(default_factory=list)  # in the module, not in the checkpoint: kept as initialised
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the module

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, names in (("re-initialised (shape differs)", self.reinitialised),
                             ("missing from checkpoint (kept as initialised)", self.missing),
                             ("unused from checkpoint", self.unused)):
            if names:
                lines.append(f"{title}: {len(names)}: " + ", ".join(names[:8]) + (" …" if len(names) > 8 else ""))
        return "\n".join(lines)


def load_pretrained_weights(module: nn.Module, path: str | Path, prefix: str = "",
                            reinit_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Load the tensors of a Lightning checkpoint (or a plain state dict) whose names start with ``prefix``
    into ``module`` by name (prefix stripped). A shape mismatch is an error unless the tensor's name starts
    with one of ``reinit_prefixes``; a checkpoint sharing no tensor with the module is an error. The file is
    read with ``safe_load`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist "
                                f"(set model.pretrained, or CKPT=... for make)")
    raw = safe_load(path)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} holds no state dict")
    source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    report = load_tensors(module, source, str(path), strict=False, reinit_prefixes=reinit_prefixes, prefix=prefix)
    if not report.loaded:
        raise CheckpointMismatchError(f"{path}: no tensor under '{prefix}' matches the model "
                                      f"(checkpoint has e.g. {list(state)[:3]})")
    return report


def load_tensors(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool = True,
                 initialised: Sequence[str] = (), reinit_prefixes: tuple[str, ...] = (),
                 prefix: str = "") -> LoadReport:
    """Copy ``state`` (names relative to ``module``) into ``module`` and report it tensor by tensor.

    A shape mismatch is an error naming the tensor (``prefix`` + name, as in the file) and both shapes, unless the
    name starts with one of ``reinit_prefixes``. With ``strict``, a module tensor the state lacks (other than the
    names in ``initialised``: tensors the source is known not to provide, kept as initialised) or a state tensor
    the module lacks is an error listing them all. ``source`` names the file in messages."""
    target = module.state_dict()
    report, to_load = LoadReport(), {}
    for name, tensor in state.items():
        if name not in target:
            report.unused.append(name)
        elif target[name].shape == tensor.shape:
            to_load[name] = tensor
            report.loaded.append(name)
        elif name.startswith(reinit_prefixes):
            report.reinitialised.append(name)
        else:
            raise CheckpointMismatchError(f"{source}: tensor '{prefix}{name}' has shape {tuple(tensor.shape)}, the "
                                          f"model expects {tuple(target[name].shape)}")
    report.missing = [n for n in target if n not in state]
    if strict:
        check_state_dict(module, {**to_load, **{n: state[n] for n in report.unused}}, source,
                         may_be_missing=[*initialised, *report.reinitialised], prefix=prefix)
    module.load_state_dict(to_load, strict=False)
    return report
