"""Point-Bind in ImageBind's own space: the module's text, image and audio embeddings come from ImageBind's towers,
alignment trains against them, and cached embeddings belong to the tower that made them."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_pointbind import TINY_BERT

from lang3d.models.imagebind import ImageBindAudioEncoder, ImageBindImageEncoder, ImageBindTextEncoder, load_towers
from pointbind import PointBindAlignment

TOWERS = Path(__file__).parent / "data" / "imagebind_official" / "imagebind_tiny.pth"
GOLDEN = torch.load(TOWERS.parent / "golden.pt", weights_only=True)


def module(**kwargs) -> PointBindAlignment:
    options = dict(encoder="pointbert", encoder_options=TINY_BERT, clip_model="lang3d-tiny-imagebind",
                   clip_pretrained=str(TOWERS), warmup_steps=2, log_embeddings=0)
    return PointBindAlignment(**{**options, **kwargs})


def test_embeddings_are_imagebinds_and_alignment_trains_against_them():
    model = module(modalities=["text", "image", "audio"])
    towers = load_towers("lang3d-tiny-imagebind", TOWERS, ["text", "vision", "audio"])
    texts = ["a chair", "a red car by the sea"]
    images = torch.randint(0, 256, (2, 40, 56, 3), dtype=torch.uint8)
    expected = {"text": ImageBindTextEncoder(towers["text"])(texts),
                "image": ImageBindImageEncoder(towers["vision"])(images),
                "audio": ImageBindAudioEncoder(towers["audio"])(GOLDEN["audio_input"])}
    torch.testing.assert_close(model.embed_texts(texts), F.normalize(expected["text"], dim=-1))
    torch.testing.assert_close(model.embed_images(images), F.normalize(expected["image"], dim=-1))
    torch.testing.assert_close(model.embed_audio(GOLDEN["audio_input"]), F.normalize(expected["audio"], dim=-1))
    torch.testing.assert_close(expected["audio"], GOLDEN["audio"])   # the official model's audio embeddings
    assert model.head.out.weight.shape[0] == 16                 # the towers' joint space
    model.train()
    loss = model.training_step({"points": torch.randn(2, 256, 3), "caption": texts, "image": images}, 0)
    loss.backward()
    assert model.head.out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters())     # frozen, never in a checkpoint
    assert not any(k.startswith(("text_encoder.", "image_encoder.", "audio_encoder.")) for k in model.state_dict())


def test_cached_embeddings_belong_to_the_tower_that_made_them(tmp_path):
    cache = str(tmp_path / "cache")
    torch.manual_seed(0)
    first = module(clip_pretrained=None, embedding_cache=cache, modalities=["text"])
    a = first.embed_texts(["a chair"])
    torch.manual_seed(1)
    other = module(clip_pretrained=None, embedding_cache=cache, modalities=["text"])   # other random towers
    b = other.embed_texts(["a chair"])
    assert other._cache("text").misses == 1 and not torch.allclose(a, b)
    torch.testing.assert_close(b, F.normalize(other.text_encoder(["a chair"]), dim=-1))
    torch.manual_seed(0)
    again = module(clip_pretrained=None, embedding_cache=cache, modalities=["text"])
    torch.testing.assert_close(again.embed_texts(["a chair"]), a)
    assert again._cache("text").hits == 1 and again._cache("text").misses == 0


def test_towers_not_asked_for_are_absent_and_named_when_needed():
    model = module(modalities=["text"])
    assert model.image_encoder is None and model.audio_encoder is None
    with pytest.raises(ValueError, match=r"no image tower: add 'image' to model.modalities \(now \['text'\]\)"):
        model.embed_images(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown joint-space modality \\['sound'\\]"):
        module(modalities=["text", "sound"])
    with pytest.raises(ValueError, match=r"unknown joint-space modality \[\]"):
        module(modalities=[])
    with pytest.raises(ValueError, match="audio tower is ImageBind's: model.clip_model 'lang3d-tiny-ViT' has none"):
        module(clip_model="lang3d-tiny-ViT", clip_pretrained=None, modalities=["text", "audio"])
