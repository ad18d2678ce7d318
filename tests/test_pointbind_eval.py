"""Point-Bind evaluation: template averaging, zero-shot top-k, retrieval recall / mAP, embedding arithmetic."""
import math

import pytest
import torch
import torch.nn.functional as F

from lang3d.metrics.retrieval import EmbeddingBank, retrieval_scores
from lang3d.models.clip import CLIPTextEncoder, load_clip
from pointbind.arithmetic import compose, composed_retrieval, nearest
from pointbind.zeroshot import average_templates, class_text_embeddings, topk_accuracy, zero_shot_logits


def test_template_average_by_hand():
    prompts = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # one class, two templates
    # normalised: (0.6, 0.8) and (0, 1); mean (0.3, 0.9); norm sqrt(0.9)
    expected = torch.tensor([[0.3, 0.9]]) / math.sqrt(0.9)
    torch.testing.assert_close(average_templates(prompts), expected)


def test_class_text_embeddings_with_the_clip_text_tower():
    torch.manual_seed(0)
    encoder = CLIPTextEncoder(*load_clip("lang3d-tiny-ViT"))
    names, templates = ["chair", "flower pot"], ["a {}.", "a point cloud model of {}.", "itap of my {}."]
    got = class_text_embeddings(encoder, names, templates, chunk=4)  # chunks cut across classes
    for c, name in enumerate(names):
        each = [F.normalize(encoder([t.format(name)])[0], dim=0) for t in templates]
        torch.testing.assert_close(got[c], F.normalize(sum(each) / len(each), dim=0), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="'\\{\\}'"):
        class_text_embeddings(encoder, names, ["no slot"])


def test_zero_shot_logits_and_topk_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.1, 0.3], [0.2, 0.3, 0.1]])
    acc = topk_accuracy(logits, torch.tensor([2, 0, 0]), ks=(1, 2, 5))
    assert acc[1].item() == pytest.approx(1 / 3)
    assert acc[2].item() == pytest.approx(1.0) and acc[5].item() == pytest.approx(1.0)
    points, classes = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    torch.testing.assert_close(zero_shot_logits(points, classes), torch.tensor([[1 / math.sqrt(2), 0.0]]))


def test_retrieval_by_hand():
    gallery = torch.eye(4)
    gallery_labels = torch.tensor([0, 1, 0, 1])
    query = torch.tensor([[0.5, 0.9, 0.1, 0.3],    # label 0: ranks g1 g0 g3 g2 -> relevant at 2 and 4
                          [0.3, 0.9, 0.1, 0.6],    # label 1: ranks g1 g3 g0 g2 -> relevant at 1 and 2
                          [1.0, 0.0, 0.0, 0.0]])   # label 2: nothing relevant -> left out
    scores = retrieval_scores(query, gallery, torch.tensor([0, 1, 2]), gallery_labels, ks=(1, 2))
    assert scores["queries"].item() == 2
    assert scores["R@1"].item() == pytest.approx(0.5)
    assert scores["R@2"].item() == pytest.approx(1.0)
    # AP: query 0 (1/2 + 2/4) / 2 = 0.5; query 1 (1 + 1) / 2 = 1
    assert scores["mAP"].item() == pytest.approx(0.75)


def test_retrieval_excluding_self_by_hand():
    items = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1])
    scores = retrieval_scores(items, items, labels, labels, ks=(1,), exclude_self=True)
    # item 0: item 1 first (relevant): AP 1. item 1: item 2 (0.96) before item 0 (0.8): AP 1/2. item 2: none.
    assert scores["queries"].item() == 2
    assert scores["R@1"].item() == pytest.approx(0.5)
    assert scores["mAP"].item() == pytest.approx(0.75)


def naive_scores(query, gallery, qlab, glab, ks, exclude_self=False):
    recalls, aps = {k: [] for k in ks}, []
    for i in range(len(query)):
        sims = [(float(F.cosine_similarity(query[i], gallery[j], dim=0)), j) for j in range(len(gallery))
                if not (exclude_self and j == i)]
        ranked = [j for _, j in sorted(sims, key=lambda s: (-s[0], s[1]))]
        rel = [int(glab[j] == qlab[i]) for j in ranked]
        if not sum(rel):
            continue
        for k in ks:
            recalls[k].append(float(any(rel[:k])))
        hits, precision_sum = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                hits += 1
                precision_sum += hits / rank
        aps.append(precision_sum / sum(rel))
    out = {f"R@{k}": sum(v) / len(v) for k, v in recalls.items()}
    out["mAP"] = sum(aps) / len(aps)
    return out


def test_retrieval_matches_a_naive_ranking_on_random_data():
    g = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(13, 6, generator=g), torch.randn(29, 6, generator=g)
    qlab, glab = torch.randint(0, 5, (13,), generator=g), torch.randint(0, 5, (29,), generator=g)
    got = retrieval_scores(query, gallery, qlab, glab, ks=(1, 5, 10), chunk=4)
    expected = naive_scores(query, gallery, qlab, glab, (1, 5, 10))
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key
    got = retrieval_scores(gallery, gallery, glab, glab, ks=(1, 5), exclude_self=True, chunk=7)
    expected = naive_scores(gallery, gallery, glab, glab, (1, 5), exclude_self=True)
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key


def test_embedding_bank_concatenates_and_resets():
    bank = EmbeddingBank(("point", "label"))
    assert bank.compute() is None
    bank.update(point=torch.ones(2, 3), label=torch.tensor([0, 1]))
    bank.update(point=torch.zeros(1, 3), label=torch.tensor([4]))
    data = bank.compute()
    assert data["point"].shape == (3, 3) and data["label"].tolist() == [0, 1, 4]
    bank.reset()
    assert bank.compute() is None
    with pytest.raises(ValueError, match="exactly"):
        bank.update(point=torch.ones(1, 3))
    with pytest.raises(ValueError, match="different lengths"):
        bank.update(point=torch.ones(2, 3), label=torch.tensor([1]))


def test_embedding_arithmetic():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0])
    torch.testing.assert_close(compose(a, b), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(compose(a, b, weights=(1, 3)), torch.tensor([1.0, 3.0]) / math.sqrt(10))
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 0.2]])
    scores, index = composed_retrieval(a, b, gallery, k=2)
    assert index.tolist() == [2, 4]  # the blend, then the item nearest to it
    assert scores[0].item() == pytest.approx(1.0)
    batch_scores, batch_index = nearest(torch.stack([a, b]), gallery, k=1)
    assert batch_index[:, 0].tolist() == [0, 1] and batch_scores.shape == (2, 1)
    with pytest.raises(ValueError, match="equal shapes"):
        compose(a, torch.ones(3))


def test_arithmetic_predict_writes_the_nearest_gallery_items(tmp_path):
    import json

    import lightning as L

    from datamodules.synthetic.cap3d import generate_cap3d
    from pointbind.arithmetic_data import ArithmeticInputError, ArithmeticQueriesDataModule
    from pointbind.module import PointBindAlignment
    from pointbind.writers import ArithmeticRankingWriter

    generate_cap3d(tmp_path / "cap3d", num_objects=2, views=1, image_size=32, points=512)
    cloud = next((tmp_path / "cap3d").rglob("*.pt"))
    image = next((tmp_path / "cap3d").rglob("00000.png"))
    gallery = ["a red cube", "a blue sphere", "a green cone"]
    model = PointBindAlignment(encoder="pointbert", clip_model="lang3d-tiny-ViT", clip_pretrained=None,
                               encoder_options={"num_groups": 8, "group_size": 8, "tokenizer_dim": 16,
                                                "tokenizer_hidden": [16, 16, 16], "width": 16, "depth": 1,
                                                "heads": 2, "pos_hidden": 8})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[ArithmeticRankingWriter(output=str(tmp_path / "out.json"))])
    # weights (0, 1): the composed query is the text embedding itself, so its own caption ranks first
    dm = ArithmeticQueriesDataModule([{"points": str(cloud), "text": "a blue sphere"}, {"points": str(cloud),
                                      "image": str(image)}], gallery_texts=gallery, gallery_images=[str(image)],
                                     num_points=64, k=2, weights=(0.0, 1.0))
    trainer.predict(model, datamodule=dm)
    results = json.loads((tmp_path / "out.json").read_text())
    assert [r["nearest"][0]["item"] for r in results] == ["a blue sphere", str(image)]
    assert all(len(r["nearest"]) == 2 and r["nearest"][0]["score"] >= r["nearest"][1]["score"] for r in results)
    for query in ({"points": str(cloud), "text": "a cube", "image": str(image)}, {"caption": "a cube"}, {}):
        with pytest.raises(ArithmeticInputError, match="or 'points' and one of the others"):
            ArithmeticQueriesDataModule([query], gallery_texts=gallery)


def test_retrieval_ranks_exact_ties_in_gallery_order_and_counts_negative_cosines():
    """Duplicated gallery rows (exact ties, relevant and not) and queries whose every cosine is negative: the scores
    are the naive stable ranking's (torchmetrics on raw cosines would order ties arbitrarily and drop items <= 0)."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 4, generator=g)
    gallery = base.repeat_interleave(4, 0)                          # 4 exact copies of each of 5 rows
    glab = torch.arange(20) % 3                                     # copies carry different labels
    query = torch.cat([base, -base])                                # -base: cosine -1 with its own copies
    qlab = torch.randint(0, 3, (10,), generator=g)
    got = retrieval_scores(query, gallery, qlab, glab, ks=(1, 2, 3))
    expected = naive_scores(query, gallery, qlab, glab, (1, 2, 3))
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-6), key
    # by hand: an exact tie goes to the gallery's first item, a relevant item at cosine -1 is still ranked (third)
    tie = retrieval_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]),
                           torch.tensor([1]), torch.tensor([0, 1, 1]), ks=(1, 2))
    assert tie["R@1"].item() == 0.0 and tie["R@2"].item() == 1.0
    assert tie["mAP"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)
