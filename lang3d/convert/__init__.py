"""Converters from published checkpoints to the project's tensor names, usable from the command line and at
load time.

A *kind* (``CheckpointKind``) knows one published layout: how to recognise a file of it, which non-tensor types
the file may pickle (``lang3d.training.checkpoint.safe_load`` allows exactly those), and how to rename its tensors to
the project's names, listing what it drops and which project tensors the file does not provide. Kinds register
themselves in ``KINDS`` (one module per kind, imported at the end of this file).

    lang3d convert pointbind pointbind_i2pmae.pt pointbind_i2pmae.ckpt      # the command line
    conversion = read_checkpoint("pointbind_i2pmae.pt", ["pointbind"])      # at load time (official or converted)

A converted file is ``{"state_dict": {project name: tensor}, "lang3d_conversion": {"kind", "source", "dropped",
"initialised", ...}}``; ``read_checkpoint`` takes it as well as the published file.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lang3d.training.atomic import atomic_write
from lang3d.training.checkpoint import CheckpointMismatchError, safe_load

CONVERSION_KEY = "lang3d_conversion"


class ConversionError(CheckpointMismatchError):
    """A file is not of the layout its kind expects (an unknown tensor name, a missing part)."""


@dataclass
class Conversion:
    """A published checkpoint in the project's names.

    state: {project name: tensor}; dropped: source names left out (not needed by the project); initialised:
    project names the source does not provide (kept as initialised, by design of the published model); meta:
    what the loader needs to know (e.g. ``{"encoder": "i2pmae"}``)."""

    kind: str
    source: str
    state: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Kept / dropped counts, the dropped names grouped by module (up to three name components, indices and
        the tensor's own name left out)."""
        groups = Counter(".".join([c for c in name.split(".")[:-1] if not c.isdigit()][:3] or name.split(".")[:1])
                         for name in self.dropped)
        about = ", ".join([self.kind, *(f"{k} {v}" for k, v in self.meta.items())])
        lines = [f"{self.source} ({about}): kept {len(self.state)} tensors, dropped {len(self.dropped)}"]
        lines += [f"  dropped {count:5d} × {group}.*" for group, count in sorted(groups.items())]
        if self.initialised:
            lines.append(f"  not in the file, kept as initialised: {', '.join(self.initialised)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckpointKind:
    """One published checkpoint layout.

    name: the CLI's KIND; description: what it is; matches(raw) -> bool: whether a loaded file has this layout;
    convert(raw, source) -> Conversion; allowed_globals: the non-tensor types its files pickle (numpy scalars in
    a metric, say), allowed by ``safe_load`` and nothing else."""

    name: str
    description: str
    matches: Callable[[Any], bool]
    convert: Callable[[Any, str], Conversion]
    allowed_globals: tuple = ()


@dataclass(frozen=True)
class Published:
    """Where a checkpoint is published: ``tag`` names it in configs; the file is looked for as ``filename`` in
    ``checkpoint_dir()`` (downloads need a browser or the hosting site's client, so they are not automatic)."""

    tag: str
    kind: str
    filename: str
    url: str


KINDS: dict[str, CheckpointKind] = {}
PUBLISHED: dict[str, Published] = {}


def register(kind: CheckpointKind, *published: Published) -> CheckpointKind:
    """Add a kind (and the published files of that kind, by tag) to the registry."""
    if kind.name in KINDS:
        raise ValueError(f"checkpoint kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind
    for item in published:
        PUBLISHED[item.tag] = item
    return kind


def checkpoint_dir() -> Path:
    """Folder of downloaded published checkpoints: ``$LANG3D_CACHE/checkpoints`` (default ~/.cache/lang3d)."""
    return Path(os.environ.get("LANG3D_CACHE", Path.home() / ".cache" / "lang3d")) / "checkpoints"


def resolve(source: str | Path) -> Path:
    """A file path, or a tag of ``PUBLISHED`` (looked for in ``checkpoint_dir()``) -> an existing file."""
    text = str(source)
    if text in PUBLISHED:
        item = PUBLISHED[text]
        path = checkpoint_dir() / item.filename
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint tag '{text}' is the file {path}, which does not exist: download "
                                    f"{item.filename} from {item.url} into {path.parent} (or set LANG3D_CACHE), or "
                                    "give the file's path instead of the tag")
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        tags = ", ".join(sorted(PUBLISHED))
        raise FileNotFoundError(f"checkpoint {path} does not exist (nor is it a known tag: {tags})")
    return path


def read_checkpoint(source: str | Path, kinds: Sequence[str]) -> Conversion:
    """Read a published checkpoint of one of ``kinds`` (or its ``lang3d convert`` output) safely and return it
    in the project's names. The layout is recognised from the file's contents; a file of no such kind is an
    error naming the file and the kinds tried."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown checkpoint kinds {unknown}; known: {sorted(KINDS)}")
    path = resolve(source)
    allowed = tuple(g for k in kinds for g in KINDS[k].allowed_globals)
    raw = safe_load(path, allowed)
    if isinstance(raw, Mapping) and CONVERSION_KEY in raw:
        info = dict(raw[CONVERSION_KEY])
        if info.get("kind") not in kinds:
            raise ConversionError(f"{path} was converted from a '{info.get('kind')}' checkpoint; expected one of "
                                  f"{list(kinds)}")
        kind, origin = info.pop("kind"), info.pop("source", str(path))
        return Conversion(kind, f"{path} (from {origin})", dict(raw["state_dict"]), list(info.pop("dropped", [])),
                          list(info.pop("initialised", [])), info)
    for name in kinds:
        if KINDS[name].matches(raw):
            return KINDS[name].convert(raw, str(path))
    raise ConversionError(f"{path} is not a checkpoint of kind {' / '.join(kinds)} "
                          f"({'; '.join(KINDS[k].description for k in kinds)}); its top-level keys: "
                          f"{list(raw)[:8] if isinstance(raw, Mapping) else type(raw).__name__}")


def save_conversion(conversion: Conversion, out: str | Path) -> None:
    """Write ``conversion`` as a converted checkpoint (atomically)."""
    payload = {"state_dict": {k: v.contiguous() for k, v in conversion.state.items()},
               CONVERSION_KEY: {"kind": conversion.kind, "source": conversion.source, "dropped": conversion.dropped,
                                "initialised": conversion.initialised, **conversion.meta}}
    with atomic_write(out, "wb") as f:
        torch.save(payload, f)


def rename(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]], source: str,
           drop: Callable[[str], bool] = lambda name: False,
           copy: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename ``state`` by the first rule (regex fully matching the name, replacement) that matches each name;
    names for which ``drop`` holds are left out (and returned). A name neither renamed nor dropped is an error
    naming it: the file is not the expected layout. Kept tensors are copied out of the (memory-mapped) file, or with
    ``copy=False`` stay views of it, read only where used."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    kept, dropped = {}, []
    for name, tensor in state.items():
        if drop(name):
            dropped.append(name)
            continue
        for pattern, replacement in compiled:
            if pattern.fullmatch(name):
                kept[pattern.sub(replacement, name)] = tensor.clone() if copy else tensor
                break
        else:
            raise ConversionError(f"{source}: tensor '{name}' is not part of the expected layout")
    return kept, dropped


def main(argv: Sequence[str]) -> None:
    """``lang3d convert KIND IN OUT``: convert a published checkpoint and print what was kept and dropped."""
    import argparse

    parser = argparse.ArgumentParser(prog="lang3d convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(KINDS), help="; ".join(f"{k.name}: {k.description}"
                                                                      for k in KINDS.values()))
    parser.add_argument("input", help="the published file (or a tag: " + ", ".join(sorted(PUBLISHED)) + ")")
    parser.add_argument("output", help="the converted checkpoint to write")
    args = parser.parse_args(list(argv))
    conversion = read_checkpoint(args.input, [args.kind])
    save_conversion(conversion, args.output)
    print(conversion.summary())
    print(f"wrote {args.output}")


# each module registers its kinds
from lang3d.convert import i2pmae, imagebind, point_e_pointnet, pointbert, pointbind, pointcontrast  # noqa: E402,F401
