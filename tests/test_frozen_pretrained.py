"""Frozen pretrained networks (lang3d.training.checkpoint.FrozenPretrained / keep_out_of_state_dict): registered
submodules that move with their owner, stay in eval mode and never enter a state dict or a Lightning checkpoint;
each CLIP encoder holds only the tower it uses."""
import copy
import gc
import pickle
import weakref

import lightning as L
import pytest
import torch
from torch import nn

from lang3d.models.clip import CLIPDenseImageEncoder, CLIPTextEncoder, load_clip
from lang3d.models.prompt_learner import PromptLearner
from lang3d.training.checkpoint import keep_out_of_state_dict
from pointbind.clip_image import CLIPImageEncoder
from sepe.metrics import PointFID
from sepe.pointcloud_features import PointNet2SSG

TINY = "lang3d-tiny-RN"   # ResNet visual tower: BatchNorm
NAMES = ["chair", "table", "sofa"]


def _text_tower_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """open_clip CLIP parameters outside the visual tower and the logit scale / bias: the text tower's."""
    return {n: p for n, p in model.named_parameters() if not n.startswith(("visual.", "logit_"))}


def test_text_encoder_holds_only_the_text_tower_and_the_visual_one_can_be_freed():
    torch.manual_seed(0)
    model, tokenizer = load_clip(TINY)
    text = _text_tower_parameters(model)
    texts = ["a chair", "a very small table"]
    want = model.encode_text(tokenizer(texts))
    encoder = CLIPTextEncoder(model, tokenizer)
    assert {id(p) for p in encoder.parameters()} == {id(p) for p in text.values()}
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in text.values())
    assert not {id(p) for p in encoder.parameters()} & {id(p) for p in model.visual.parameters()}
    torch.testing.assert_close(encoder(texts), want, rtol=0, atol=0)

    owner = nn.ModuleDict({"prompts": PromptLearner(encoder, NAMES, n_ctx=2)}).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in encoder.parameters())   # moved with its owner...
    assert all(p.dtype == torch.float32 for p in model.visual.parameters())   # ...the visual tower is not held
    visual = weakref.ref(model.visual)
    del model, text
    gc.collect()
    assert visual() is None   # nothing keeps the unused tower alive
    assert owner["prompts"]().shape == (len(NAMES), encoder.embed_dim)


@pytest.mark.parametrize("name", [TINY, "lang3d-tiny-ViT"])
def test_image_encoders_hold_only_the_visual_tower(name):
    torch.manual_seed(0)
    model, _ = load_clip(name)
    visual = {id(p) for p in model.visual.parameters()}
    encoders = [CLIPImageEncoder(model)] + ([CLIPDenseImageEncoder(model)] if name == TINY else [])
    for encoder in encoders:
        assert {id(p) for p in encoder.parameters()} == visual, type(encoder).__name__
    images = torch.randint(0, 256, (2, 40, 48, 3), dtype=torch.uint8)
    torch.testing.assert_close(encoders[0](images), model.encode_image(encoders[0].preprocess(images)), rtol=0, atol=0)


class _Holder(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.frozen = keep_out_of_state_dict(nn.Linear(3, 3))
        self.trained = nn.Linear(3, 2)


def test_keep_out_of_state_dict_at_any_depth_and_strict_loading_otherwise():
    outer = nn.Sequential(_Holder(0))
    state = outer.state_dict()
    assert list(state) == ["0.trained.weight", "0.trained.bias"]
    assert list(outer[0].frozen.state_dict()) == []
    assert "0.frozen" in dict(outer.named_modules())

    other = nn.Sequential(_Holder(1))
    kept = other[0].frozen.weight.detach().clone()
    other.load_state_dict(state)   # strict: the absent frozen tensors keep their values
    assert torch.equal(other[0].frozen.weight, kept) and torch.equal(other[0].trained.weight, outer[0].trained.weight)
    given = torch.full((3, 3), 7.0)
    other.load_state_dict({**state, "0.frozen.weight": given})   # frozen tensors in a state dict are loaded
    assert torch.equal(other[0].frozen.weight, given)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "0.extra"'):
        other.load_state_dict({**state, "0.extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0.trained.bias"\. '):
        other.load_state_dict({"0.trained.weight": state["0.trained.weight"]})
    result = other.load_state_dict({"0.trained.weight": state["0.trained.weight"]}, strict=False)
    assert result.missing_keys == ["0.trained.bias"] and result.unexpected_keys == []

    for twin in (copy.deepcopy(outer), pickle.loads(pickle.dumps(outer))):   # DDP spawn pickles the module
        assert list(twin.state_dict()) == list(state)


def test_frozen_pretrained_stays_eval_and_frozen_in_a_metric():
    network = PointNet2SSG(num_classes=4, width=1)
    fid = PointFID(network)
    assert dict(fid.named_modules())["frozen.network"] is network and fid.network is network
    fid.train()
    assert not any(m.training for m in network.modules()) and not any(p.requires_grad for p in network.parameters())
    assert list(fid.state_dict()) == []
    fid.to("meta")   # moves with the metric, as with .cuda()
    assert {p.device.type for p in network.parameters()} == {"meta"}


class _Guided(nn.Module):
    """Prompts and a head, the way LanguageGuidedNet nests a PromptLearner."""

    def __init__(self, prompts: PromptLearner):
        super().__init__()
        self.prompts = prompts
        self.head = nn.Linear(prompts.embed_dim, prompts.embed_dim)


class HoldsFrozenCLIP(L.LightningModule):
    """A frozen CLIP RN image encoder (BatchNorm) and, two modules down, a prompt learner over the frozen text tower."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        clip, tokenizer = load_clip(TINY)
        self.image_encoder = CLIPDenseImageEncoder(clip)
        self.net = _Guided(PromptLearner(CLIPTextEncoder(clip, tokenizer), NAMES, n_ctx=2))

    def training_step(self, batch, batch_idx):
        image = self.image_encoder(batch[0])["global_"]
        logits = self.net.head(image) @ self.net.prompts().T
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def _fit(module: L.LightningModule, steps: int, root, ckpt_path=None) -> L.Trainer:
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def test_lightning_checkpoint_holds_no_clip_tensor_and_reloads_strictly(tmp_path):
    module = HoldsFrozenCLIP()
    modules = dict(module.named_modules())
    assert "net.prompts.text_encoder" in modules and "image_encoder.visual" in modules   # visible to PyTorch
    bns = [m for m in module.image_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    statistics = [bn.running_mean.clone() for bn in bns]
    module.train()
    assert module.net.training and not any(m.training for m in module.image_encoder.modules())
    assert not any(m.training for m in module.net.prompts.text_encoder.modules())
    ctx = module.net.prompts.ctx.detach().clone()

    trainer = _fit(module, 2, tmp_path)
    assert not torch.equal(module.net.prompts.ctx, ctx)   # trained
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(bns, statistics))   # BatchNorm never in train mode
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    assert sorted(saved) == ["net.head.bias", "net.head.weight", "net.prompts.ctx"]

    reloaded = HoldsFrozenCLIP.load_from_checkpoint(path)   # strict
    for name, tensor in saved.items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    clip_tensors = [(n, t) for n, t in module.named_parameters() if not t.requires_grad]
    assert len(clip_tensors) > 10
    assert all(torch.equal(t, dict(reloaded.named_parameters())[n]) for n, t in clip_tensors)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "net.head.bias"\. '):
        reloaded.load_state_dict({k: v for k, v in saved.items() if k != "net.head.bias"})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        reloaded.load_state_dict({**saved, "net.prompts.extra": torch.zeros(1)})

    _fit(HoldsFrozenCLIP(), 3, tmp_path, ckpt_path=path)   # Lightning's own restore (model and optimizer)
