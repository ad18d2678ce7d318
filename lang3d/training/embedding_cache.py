"""On-disk cache (HDF5, h5py) of embeddings computed by a frozen model, e.g. CLIP text and image embeddings.

One file holds one group per *namespace*: a string naming the model and what it embeds, built with the model's
``model_fingerprint`` so that other weights (another checkpoint, another random init) never see stale
embeddings. In a group, ``keys`` [n] (S64: ``content_key`` digests) and ``embeddings`` [n, D] float32; rows
are only appended. A row counts once its key is written (embeddings first, keys second), so a writer killed
half-way leaves no wrong row behind.

One process per file: HDF5 locks the file while it is open for writing (under DDP give each rank its own file).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import torch
from torch import nn

KEY_DTYPE = "S64"


class EmbeddingCacheError(RuntimeError):
    """The cache file cannot be opened or does not hold what this cache expects; the message names the file."""


def model_fingerprint(module: nn.Module, samples: int = 4096) -> str:
    """sha256 hex digest of a module's state: every tensor's name, shape, dtype and ``samples`` evenly strided
    values (cheap even for ViT-L; any other checkpoint or initialisation changes it)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def content_key(content: str | bytes | np.ndarray) -> str:
    """sha256 hex digest (64 characters) of a text (UTF-8), raw bytes or an array (dtype, shape and bytes)."""
    digest = hashlib.sha256()
    if isinstance(content, str):
        digest.update(b"str|" + content.encode("utf-8"))
    elif isinstance(content, bytes):
        digest.update(b"bytes|" + content)
    else:
        array = np.ascontiguousarray(content)
        digest.update(f"array|{array.dtype.str}|{array.shape}|".encode() + array.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of one ``namespace`` in the HDF5 file ``path`` (created on first write).

    ``get_or_compute(keys, compute)``: rows for keys already stored are read; the others are computed once,
    appended and returned. ``misses`` counts keys computed, ``hits`` the other requested keys (a key repeated in
    one request is computed once).
    """

    def __init__(self, path: str | Path, namespace: str):
        self.path = Path(path).expanduser()
        self.namespace = namespace
        self.group_name = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:32]
        self.hits = self.misses = 0
        self._file: h5py.File | None = None
        self._rows: dict[bytes, int] = {}

    def __getstate__(self) -> dict:  # an open HDF5 handle cannot be pickled: reopen lazily
        state = self.__dict__.copy()
        state.update(_file=None, _rows={})
        return state

    def _open(self) -> h5py.File:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file = h5py.File(self.path, "a")
            except OSError as err:
                raise EmbeddingCacheError(f"embedding cache {self.path} cannot be opened ({err}); another process "
                                          f"may have it open, or it is damaged (delete it to rebuild)") from err
            group = self._file.get(self.group_name)
            if group is not None:
                if "keys" not in group or "embeddings" not in group:
                    raise EmbeddingCacheError(f"embedding cache {self.path}: group {self.group_name} "
                                              f"({self.namespace}) lacks 'keys' or 'embeddings'")
                self._rows = {bytes(k): i for i, k in enumerate(group["keys"][:])}
        return self._file

    def __len__(self) -> int:
        self._open()
        return len(self._rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._rows = None, {}

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """keys [N] (``content_key`` digests) -> embeddings [N, D] float32 on the CPU, in key order.

        ``compute(indices)`` gets the positions (first occurrences) of the keys not stored yet and returns their
        embeddings [M, D]; they are appended to the file before being returned.
        """
        file = self._open()
        encoded = [k.encode("ascii") for k in keys]
        if any(len(k) > 64 for k in encoded):
            raise ValueError("embedding cache keys must be at most 64 ASCII characters (use content_key)")
        first: dict[bytes, int] = {}
        for i, key in enumerate(encoded):
            first.setdefault(key, i)
        missing = [k for k in first if k not in self._rows]
        if missing:
            values = compute([first[k] for k in missing]).detach().float().cpu().numpy()
            if values.shape[0] != len(missing) or values.ndim != 2:
                raise ValueError(f"compute returned {values.shape} for {len(missing)} items, expected [M, D]")
            self._append(file, missing, values)
        self.misses += len(missing)
        self.hits += len(encoded) - len(missing)
        group = file[self.group_name]
        unique_rows = np.array(sorted({self._rows[k] for k in first}), dtype=np.int64)
        stored = group["embeddings"][unique_rows]  # h5py reads increasing indices
        position = {row: j for j, row in enumerate(unique_rows.tolist())}
        return torch.from_numpy(stored[[position[self._rows[k]] for k in encoded]])

    def _append(self, file: h5py.File, keys: list[bytes], values: np.ndarray) -> None:
        dim = values.shape[1]
        group = file.get(self.group_name)
        if group is None:
            group = file.create_group(self.group_name)
            group.attrs["namespace"] = self.namespace
            group.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=KEY_DTYPE, chunks=(4096,))
            group.create_dataset("embeddings", shape=(0, dim), maxshape=(None, dim), dtype="f4",
                                 chunks=(max(1, min(1024, 2 ** 20 // (4 * dim))), dim))
        table = group["embeddings"]
        if table.shape[1] != dim:
            raise EmbeddingCacheError(f"embedding cache {self.path}: {self.namespace} holds {table.shape[1]}-d "
                                      f"embeddings, got {dim}-d ones")
        start = len(self._rows)  # rows past the last key are leftovers of an interrupted write: overwritten
        table.resize(start + len(keys), axis=0)
        table[start:] = values
        group["keys"].resize(start + len(keys), axis=0)
        group["keys"][start:] = np.array(keys, dtype=KEY_DTYPE)
        file.flush()
        self._rows.update({key: start + i for i, key in enumerate(keys)})
