"""ImageBind's vision, text and audio towers reproduce the official model; its published layouts load strictly.

Fixtures (tests/data/imagebind_official/, made by make_fixtures.py there from facebookresearch/ImageBind at the
commit in SOURCES.json): the official model at tiny sizes with random weights in imagebind_huge.pth's layout, its
outputs on fixed inputs (golden.pt) and the tensor names and shapes of the full-size imagebind_huge.pth.
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_checkpoints_pointbind import parts

from lang3d.convert import ConversionError, read_checkpoint, resolve
from lang3d.models.imagebind import (ImageBindImageEncoder, ImageBindTextEncoder, ImageBindTower, architecture,
                                     load_towers)
from lang3d.training.checkpoint import CheckpointMismatchError, check_state_dict
from lang3d.training.cli import main as cli_main
from pointbind.pretrained import load_release

DATA = Path(__file__).parent / "data" / "imagebind_official"
POINTBIND = Path(__file__).parent / "data" / "pointbind_official"
GOLDEN = torch.load(DATA / "golden.pt", weights_only=True)
TINY = "lang3d-tiny-imagebind"
WEIGHTS = DATA / "imagebind_tiny.pth"
_spec = importlib.util.spec_from_file_location("imagebind_fixtures", DATA / "make_fixtures.py")
FIXTURES = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(FIXTURES)


def close(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float precision relative to each row's norm (vision rows are unit vectors, text rows are scaled to
    100, audio clips to 20): 1e-6 of the norm, tight enough to tell LayerNorm eps 1e-6 from 1e-5."""
    scale = expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out / scale, expected / scale, atol=1e-6, rtol=0)


def test_tiny_architecture_is_the_one_of_the_fixtures():
    assert architecture(TINY) == json.loads(GOLDEN["options"]["architecture"])


# --------------------------------------------------------------------------------------------- golden outputs
def test_text_tower_reproduces_the_official_tokens_and_embeddings():
    encoder = ImageBindTextEncoder(load_towers(TINY, WEIGHTS, ["text"])["text"])
    texts = json.loads(GOLDEN["options"]["texts"])
    tokens = encoder.tokenize(texts)
    assert torch.equal(tokens, GOLDEN["tokens"])
    assert tokens[-1, -1] == tokens[-1].max()     # the long caption is cut, its end-of-text token kept last
    close(encoder(texts), GOLDEN["text"])
    assert torch.allclose(GOLDEN["text"].norm(dim=-1), torch.tensor(100.0))   # the file's scale 150, clipped


def test_vision_tower_reproduces_the_official_model_and_image_transform():
    tower = load_towers(TINY, WEIGHTS, ["vision"])["vision"]
    with torch.no_grad():
        close(tower(FIXTURES.pixels()), GOLDEN["vision"])
    image = np.array(Image.open(DATA / "car_image.jpg").convert("RGB"))    # 640x360: resize, then centre crop
    close(ImageBindImageEncoder(tower)(torch.from_numpy(image)[None]), GOLDEN["vision_image"])


def test_audio_tower_reproduces_the_official_model():
    tower = load_towers(TINY, WEIGHTS, ["audio"])["audio"]
    clips = GOLDEN["audio_input"]                                   # [2 sounds, 3 clips, 1, 128, 204]
    with torch.no_grad():
        close(tower(clips), GOLDEN["audio"])
        one_clip = tower(clips[:, 0])                               # [B,1,128,204]: no clip axis
    assert torch.allclose(one_clip.norm(dim=-1), torch.tensor(20.0))   # each clip scaled by the fixed 20


# --------------------------------------------------------------------------------------------- published layouts
def layout_file(keys: dict, path: Path, prefix: str = "") -> None:
    """A file with the names, shapes and dtypes of ``keys`` (zero-stride tensors: almost no bytes)."""
    torch.save({k: torch.zeros((), dtype=getattr(torch, v["dtype"])).expand(v["shape"]) for k, v in keys.items()
                if k.startswith(prefix)}, path)


@pytest.mark.parametrize("keys_file, prefix", [(DATA / "keys_imagebind_huge.json", ""),
                                               (POINTBIND / "keys_pointbind_i2pmae.json", "bind.")])
def test_full_size_files_map_every_tower_tensor(keys_file, prefix, tmp_path):
    """imagebind_huge.pth and a Point-Bind release (its bind.* tensors): every vision, text and audio tensor maps
    onto the full-size towers (built on the meta device) with its shape, filling them; the rest is dropped."""
    keys = json.loads(keys_file.read_text())
    layout_file(keys, tmp_path / "published.pt")
    conversion = read_checkpoint(tmp_path / "published.pt", ["imagebind"])
    sizes = architecture("imagebind_huge")
    mapped = 0
    for modality in ("vision", "text", "audio"):
        with torch.device("meta"):
            tower = ImageBindTower(modality, sizes)
        state = {k[len(modality) + 1:]: v for k, v in conversion.state.items() if k.startswith(f"{modality}.")}
        check_state_dict(tower, state, modality)   # no missing, unexpected or misshapen tensor
        mapped += len(state)
    assert mapped == len(conversion.state) and len(conversion.state) + len(conversion.dropped) == len(keys)
    towers = tuple(f"{prefix}modality_{part}." for part in ("preprocessors", "trunks", "heads", "postprocessors"))
    others = {k for k in keys if not k.startswith(towers) or ".depth." in k or ".thermal." in k or ".imu." in k
              or k == f"{prefix}modality_preprocessors.text.mask"}
    assert set(conversion.dropped) == others
    assert keys[f"{prefix}modality_heads.audio.2.weight"]["shape"] == [1024, 768]


def test_release_bind_tensors_give_the_towers_and_the_point_model(tmp_path):
    """A Point-Bind release holds ImageBind under bind.*: the same file gives the towers (kind imagebind) and the
    3D model (kind pointbind), each reading its own tensors."""
    release = dict(torch.load(POINTBIND / "pointbind_i2pmae_small.pt", weights_only=True))
    release = {k: v for k, v in release.items() if not k.startswith("bind.") or "modality_head_point" in k}
    release.update({f"bind.{k}": v for k, v in torch.load(WEIGHTS, weights_only=True).items()})
    torch.save(release, tmp_path / "pointbind_i2pmae.pt")
    towers = load_towers(TINY, tmp_path / "pointbind_i2pmae.pt", ["audio", "text"])
    with torch.no_grad():
        close(towers["audio"](GOLDEN["audio_input"]), GOLDEN["audio"])
        close(towers["text"](GOLDEN["tokens"]), GOLDEN["text"])
    conversion, report = load_release(parts("i2pmae"), "i2pmae", str(tmp_path / "pointbind_i2pmae.pt"))
    assert not report.missing and not report.unused and conversion.kind == "pointbind"


def test_converted_file_gives_the_same_towers(tmp_path, capsys):
    out = tmp_path / "towers.ckpt"
    cli_main(["convert", "imagebind", str(WEIGHTS), str(out)])
    printed = capsys.readouterr().out
    assert "layout imagebind_huge.pth" in printed and "modality_trunks.depth" in printed
    direct = load_towers(TINY, WEIGHTS, ["vision", "text", "audio"])
    converted = load_towers(TINY, out, ["vision", "text", "audio"])
    for modality, tower in direct.items():
        for (name, a), (_, b) in zip(tower.state_dict().items(), converted[modality].state_dict().items()):
            assert torch.equal(a, b), (modality, name)


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of the file), by mincore(2) on a fresh mapping."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = (ctypes.c_ubyte * pages)()
        assert libc.mincore(address, size, vector) == 0, ctypes.get_errno()
        libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in bytes(vector)), pages


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the page cache with mincore (Linux)")
def test_a_modality_not_asked_for_is_never_read(tmp_path):
    """Loading the text and vision towers leaves the audio tensors of the file unread: here one of them is 64 MB
    (a stand-in of a trunk weight; loading audio would reject its shape), and after the load most of the file is
    still not in the page cache (a read-ahead of a few MB around the towers' tensors aside). Reading every tensor,
    as a control, brings the whole file in."""
    state = dict(torch.load(WEIGHTS, weights_only=True))
    state["modality_trunks.audio.blocks.0.mlp.fc1.weight"] = torch.randn(128, 131072)
    path = tmp_path / "imagebind.pth"
    torch.save(state, path)
    _drop_from_page_cache(path)
    resident, pages = _resident_pages(path)
    if resident > 0.05 * pages:
        pytest.skip(f"this filesystem keeps the file cached ({resident}/{pages} pages after POSIX_FADV_DONTNEED)")
    towers = load_towers(TINY, path, ["text", "vision"])
    resident, pages = _resident_pages(path)
    assert set(towers) == {"text", "vision"} and resident < 0.4 * pages, (resident, pages)
    _drop_from_page_cache(path)
    assert float(sum(t.double().sum() for t in torch.load(path, weights_only=True, mmap=True).values())) != 0
    resident, pages = _resident_pages(path)
    assert resident > 0.95 * pages, (resident, pages)


# --------------------------------------------------------------------------------------------- clear errors
def test_unknown_or_missing_modalities_and_files_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown ImageBind modality \['depth'\].*vision, text, audio"):
        load_towers(TINY, WEIGHTS, ["text", "depth"])
    with pytest.raises(ValueError, match="unknown ImageBind architecture 'imagebind_large'"):
        load_towers("imagebind_large", WEIGHTS, ["text"])
    with pytest.raises(FileNotFoundError, match="no_such_file.pth"):
        load_towers(TINY, tmp_path / "no_such_file.pth", ["text"])
    monkeypatch.setenv("LANG3D_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"imagebind_huge\.pth.*dl\.fbaipublicfiles\.com"):
        resolve("imagebind_huge")
    text_only = {k: v for k, v in torch.load(WEIGHTS, weights_only=True).items() if ".audio." not in k}
    torch.save(text_only, tmp_path / "no_audio.pth")
    with pytest.raises(CheckpointMismatchError, match=r"no_audio\.pth holds no tensors of ImageBind's 'audio' tower"):
        load_towers(TINY, tmp_path / "no_audio.pth", ["audio"])
    with pytest.raises(CheckpointMismatchError, match=r"tensor 'text\.head\.proj\.weight' has shape \(16, 32\), the "
                                                      r"model expects \(32, 32\)"):
        load_towers({**architecture(TINY), "embed_dim": 32}, WEIGHTS, ["text"])
    short = {k: v for k, v in text_only.items() if k != "modality_trunks.text.blocks.1.norm_2.bias"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing tensor 'text\.trunk\.blocks\.1\.norm2\.bias'"):
        load_towers(TINY, tmp_path / "short.pth", ["text"])
    odd = {**text_only, "modality_trunks.text.blocks.0.attn.extra": torch.zeros(3)}
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(ConversionError, match="modality_trunks.text.blocks.0.attn.extra"):
        load_towers(TINY, tmp_path / "odd.pth", ["text"])
    torch.save({"model": {"weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match=r"other\.pth is not a checkpoint of kind imagebind"):
        load_towers(TINY, tmp_path / "other.pth", ["text"])


def test_random_towers_are_frozen_and_follow_the_seed():
    torch.manual_seed(3)
    first = load_towers(TINY, None, ["text", "audio"])
    torch.manual_seed(3)
    second = load_towers(TINY, None, ["text", "audio"])
    assert ImageBindTextEncoder(first["text"]).state_dict() == {}   # never in a checkpoint (FrozenPretrained)
    for modality, tower in first.items():
        assert not tower.training and not any(p.requires_grad for p in tower.parameters())
        for (name, a), (_, b) in zip(tower.state_dict().items(), second[modality].state_dict().items()):
            assert torch.equal(a, b), (modality, name)
