"""CoOp prompt learner, fixed prompts and random class embeddings over the tiny frozen CLIP text tower."""
import pytest
import torch
from torch import nn

from lang3d.models.clip import CLIPTextEncoder, class_prompts, load_clip
from lang3d.models.prompt_learner import FixedPrompts, PromptLearner, RandomClassEmbeddings, build_class_embeddings

NAMES = ["chair", "bookshelf", "sofa bed table", "board"]  # different token counts: EOT at different positions


def make_encoder() -> CLIPTextEncoder:
    model, tokenizer = load_clip("lang3d-tiny-RN", None)
    return CLIPTextEncoder(model, tokenizer)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return make_encoder()


class Owner(nn.Module):
    """A model holding a prompt learner the way a fine-tuning network would."""

    def __init__(self, prompts: nn.Module):
        super().__init__()
        self.prompts = prompts
        self.head = nn.Linear(2, 2)


def test_ctx_init_reproduces_the_handmade_prompt(encoder):
    learner = PromptLearner(encoder, NAMES, ctx_init="point cloud of")
    assert learner.n_ctx == 3 and learner.ctx.shape == (3, encoder.width)
    want = encoder(class_prompts(NAMES, "point cloud of {}."))  # full 77-token context, open_clip encode_text path
    got = learner()
    assert got.shape == (len(NAMES), encoder.embed_dim)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # same tokens, same computation: bit-identical
    assert not torch.allclose(got[0], got[1])


def test_default_context_layout(encoder):
    torch.manual_seed(1)
    learner = PromptLearner(encoder, NAMES)
    assert learner.n_ctx == 8 and learner.ctx.shape == (8, encoder.width)
    assert 0.015 < learner.ctx.std().item() < 0.025 and abs(learner.ctx.mean().item()) < 0.005
    # putting the embeddings of 8 known tokens into ctx must give that phrase followed by the class name
    phrase = "a big red photo of the room with"
    tokens = encoder.tokenize([phrase])
    assert int(encoder.eot_index(tokens)[0]) == 9  # 8 tokens
    with torch.no_grad():
        learner.ctx.copy_(encoder.model.token_embedding(tokens)[0, 1:9])
    torch.testing.assert_close(learner(), encoder([f"{phrase} {n}." for n in NAMES]), rtol=0, atol=0)


def test_gradients_reach_only_ctx_and_state_dict_holds_only_ctx(encoder):
    learner = PromptLearner(encoder, NAMES, n_ctx=4)
    owner = Owner(learner)
    assert list(learner.state_dict()) == ["ctx"]
    # the frozen text encoder is a registered submodule (it moves with the owner) whose parameters never train
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["ctx"]
    assert all(n == "ctx" or n.startswith("text_encoder.") for n, _ in learner.named_parameters())
    assert set(owner.state_dict()) == {"prompts.ctx", "head.weight", "head.bias"}
    assert not any(n.startswith("prompts.") and n != "prompts.ctx" for n, p in owner.named_parameters()
                   if p.requires_grad)
    learner.train()
    out = learner()
    assert out.requires_grad
    (out ** 2).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in encoder.model.parameters())
    assert not learner.prefix.requires_grad and not learner.suffix.requires_grad


def test_eval_cache_rule(encoder):
    learner = PromptLearner(encoder, NAMES, ctx_init="point cloud of")
    learner.train()
    assert learner() is not learner()  # train mode: recomputed each call
    learner.eval()
    a = learner()
    assert learner() is a and not a.requires_grad
    # load_state_dict (same tensor object, new values) must not serve the stale embeddings
    new_ctx = learner.ctx.detach() + 0.1
    learner.load_state_dict({"ctx": new_ctx})
    b = learner()
    assert b is not a and not torch.allclose(a, b)
    fresh = PromptLearner(encoder, NAMES, ctx_init="point cloud of")
    fresh.load_state_dict({"ctx": new_ctx})
    torch.testing.assert_close(b, fresh.train()())
    assert learner() is b
    # the cache follows ctx's values: an identical reload or parameter keeps it
    learner.load_state_dict(learner.state_dict())
    learner.load_state_dict({"ctx": new_ctx.clone()}, assign=True)
    assert learner() is b
    # load_state_dict(assign=True) with other values replaces the parameter
    learner.load_state_dict({"ctx": new_ctx + 0.1}, assign=True)
    c = learner()
    assert c is not b and not torch.allclose(c, b)
    fresh.load_state_dict({"ctx": new_ctx + 0.1})
    torch.testing.assert_close(c, fresh.train()())
    # train() drops the cache; so does an optimizer step
    learner.train()
    learner.eval()
    assert learner() is not c
    d = learner()
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)
    learner.train()
    learner().sum().backward()
    opt.step()
    learner.eval()
    assert not torch.allclose(learner(), d)


def test_eval_cache_sees_writes_through_data(encoder):
    """``ctx.data`` writes leave torch's version counter alone; the eval cache must not serve stale embeddings."""
    learner = PromptLearner(encoder, NAMES, ctx_init="point cloud of").eval()
    before = learner()
    learner.ctx.data.add_(0.1)
    after = learner()
    assert not torch.allclose(after, before)
    fresh = PromptLearner(encoder, NAMES, ctx_init="point cloud of")
    fresh.load_state_dict({"ctx": learner.ctx.detach()})
    torch.testing.assert_close(after, fresh.train()(), rtol=0, atol=0)


def test_to_moves_encoder_and_buffers():
    torch.manual_seed(2)
    enc = make_encoder()
    learner = PromptLearner(enc, NAMES, ctx_init="point cloud of")
    owner = Owner(learner).eval()
    cached = learner()
    assert cached.dtype == torch.float32
    owner.double()
    assert learner.ctx.dtype == learner.prefix.dtype == learner.suffix.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in enc.model.parameters())
    out = learner()
    assert out.dtype == torch.float64 and out is not cached
    torch.testing.assert_close(out, enc(class_prompts(NAMES)), rtol=0, atol=0)
    torch.testing.assert_close(out.float(), cached, rtol=1e-5, atol=1e-6)
    owner.to(torch.float32)
    assert learner().dtype == torch.float32 and next(enc.model.parameters()).dtype == torch.float32


def test_prompt_learner_bad_input(encoder):
    with pytest.raises(ValueError, match="ctx_init"):
        PromptLearner(encoder, NAMES, n_ctx=8, ctx_init="point cloud of")
    with pytest.raises(ValueError, match="no tokens"):
        PromptLearner(encoder, NAMES, ctx_init="  ")
    with pytest.raises(ValueError, match="n_ctx"):
        PromptLearner(encoder, NAMES, n_ctx=0)
    with pytest.raises(ValueError, match="context length 77"):
        PromptLearner(encoder, ["chair", " ".join(["word"] * 70)], n_ctx=8)
    PromptLearner(encoder, [" ".join(["word"] * 65)], n_ctx=8)  # 1 + 8 + 65 + 2 = 76 tokens fit
    with pytest.raises(ValueError, match="class_names"):
        PromptLearner(encoder, [])
    with pytest.raises(TypeError, match="CLIPTextEncoder"):
        PromptLearner(encoder.model, NAMES)


def test_fixed_prompts(encoder):
    fixed = FixedPrompts(encoder, NAMES, template="a {} in a room.")
    torch.testing.assert_close(fixed(), encoder(class_prompts(NAMES, "a {} in a room.")), rtol=0, atol=0)
    assert fixed.num_classes == len(NAMES) and fixed.embed_dim == encoder.embed_dim
    assert list(fixed.state_dict()) == [] and list(fixed.parameters()) == []
    assert fixed.double()().dtype == torch.float64
    with pytest.raises(ValueError, match="template"):
        FixedPrompts(encoder, NAMES, template="no slot")


def test_random_class_embeddings():
    torch.manual_seed(3)
    rand = RandomClassEmbeddings(13, 32)
    out = rand()
    assert out.shape == (13, 32) and rand.num_classes == 13 and rand.embed_dim == 32
    assert list(rand.state_dict()) == ["weight"]
    out.sum().backward()
    assert rand.weight.grad is not None
    with pytest.raises(ValueError):
        RandomClassEmbeddings(0, 32)


def test_build_class_embeddings(encoder):
    learned = build_class_embeddings("learned", encoder, NAMES, n_ctx=4)
    fixed = build_class_embeddings("fixed", encoder, NAMES)
    rand = build_class_embeddings("random", encoder, NAMES)
    assert isinstance(learned, PromptLearner) and learned.n_ctx == 4
    assert isinstance(fixed, FixedPrompts) and isinstance(rand, RandomClassEmbeddings)
    for module in (learned, fixed, rand):
        assert module().shape == (len(NAMES), encoder.embed_dim) == (module.num_classes, module.embed_dim)
    with pytest.raises(ValueError, match="unknown class embedding kind"):
        build_class_embeddings("coop", encoder, NAMES)
    with pytest.raises(TypeError, match="no options"):
        build_class_embeddings("random", encoder, NAMES, n_ctx=4)
