"""Text Querying Module (Eq. 5-9) against a hand-written computation with its own weights."""
import math

import torch

from text4point.tqm import TextQueryingModule


def batchnorm_train(x, bn):
    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def reference(tqm: TextQueryingModule, h, t):
    d = h.shape[1]
    hn, tn = batchnorm_train(h, tqm.norm_query), batchnorm_train(t, tqm.norm_text)
    Wq, Wk, Wv = tqm.attention.in_proj_weight.split(d)
    bq, bk, bv = tqm.attention.in_proj_bias.split(d)
    Q, K, V = hn @ Wq.T + bq, tn @ Wk.T + bk, tn @ Wv.T + bv
    out = torch.zeros_like(Q)
    for i in range(len(Q)):  # one query (voxel) at a time: softmax over the K texts
        scores = torch.tensor([float(Q[i] @ K[j]) / math.sqrt(d) for j in range(len(K))], dtype=h.dtype)
        weights = torch.softmax(scores, 0)
        out[i] = (weights[:, None] * V).sum(0)
    attn = out @ tqm.attention.out_proj.weight.T + tqm.attention.out_proj.bias
    mlp = tqm.mlp
    y = batchnorm_train(attn, tqm.norm_attention)
    return mlp[2](torch.nn.functional.gelu(mlp[0](y)))


def test_tqm_matches_hand_written_attention():
    torch.manual_seed(0)
    tqm = TextQueryingModule(dim=12, num_heads=1, mlp_ratio=2.0).double()
    for bn in (tqm.norm_query, tqm.norm_text, tqm.norm_attention):  # non-trivial affine parameters
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    h = torch.randn(30, 12, dtype=torch.float64)
    t = torch.randn(5, 12, dtype=torch.float64)
    with torch.no_grad():
        expected = reference(tqm, h, t)
    torch.testing.assert_close(tqm(h, t), expected, rtol=1e-9, atol=1e-9)


def test_tqm_output_depends_on_text():
    torch.manual_seed(1)
    tqm = TextQueryingModule(dim=8).eval()
    h = torch.randn(4, 8)
    t = torch.randn(3, 8)
    assert not torch.allclose(tqm(h, t), tqm(h, t.flip(1)))
    assert tqm(h, t).shape == (4, 8)
