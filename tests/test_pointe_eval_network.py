"""Point-e's P-FID / P-IS evaluation network and scores against the official code's outputs.

Golden data (tests/data/point_e_evals/, made by its make_fixture.py from openai/point-e at fc8a607c): the official
``PointNetClassifier`` (``get_model(40, normal_channel=False, width_mult=2)``, full size) on weights rebuilt here
from the same seed; features and class probabilities of 10 clouds of mixed shapes, offsets and scales streamed in
device batches of 4, and of 70 float32 clouds in the unit cube as two sets of 35 in point-e's device batches of 64,
with their P-FID and P-IS; P-FID / P-IS of seeded random sets from the official ``fid_is``. The clouds are rebuilt
from their seeds.
"""
import argparse
import importlib.util
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lang3d.metrics.generation import fid_statistics, frechet_distance, inception_score_splits
from lang3d.models.point_e.eval_pointnet import (PointNet2SSG, ball_query, features_and_logits, load_eval_pointnet,
                                                 normalize_clouds)
from lang3d.training.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from lang3d.training.cli import main as lang3d_main
from sepe.metrics import PointFID, PointIS
from sepe.pointcloud_features import PointNet2Classification, load_feature_network

DATA = Path(__file__).parent / "data" / "point_e_evals"
_spec = importlib.util.spec_from_file_location("point_e_evals_fixture", DATA / "make_fixture.py")
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)


@pytest.fixture(scope="module")
def official():
    keys = [(k, shape) for k, shape in json.loads((DATA / "pointnet_keys.json").read_text())]
    outputs = np.load(DATA / "official_outputs.npz")
    state = {k: torch.from_numpy(v) for k, v in fixture.random_state_dict(keys).items()}
    clouds = torch.from_numpy(fixture.random_clouds())
    return keys, state, clouds, outputs


@pytest.fixture(scope="module")
def pointnet_file(official, tmp_path_factory):
    """The random weights in the layout of point-e's pointnet.pt (a training checkpoint of the PointNet++ code it
    comes from: model_state_dict, optimizer state, epoch and numpy-scalar accuracies)."""
    _, state, _, _ = official
    path = tmp_path_factory.mktemp("pointnet") / "pointnet.pt"
    torch.save({"epoch": 57, "instance_acc": np.float64(0.92), "class_acc": np.float64(0.89),
                "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3}]}}, path)
    return path


def test_state_dict_has_the_official_keys_and_shapes(official):
    keys, _, _, _ = official
    assert [(k, list(v.shape)) for k, v in PointNet2SSG(40, 2).state_dict().items()] == keys


def test_official_file_gives_the_official_features_and_predictions(official, pointnet_file):
    """Clouds streamed in parts of any size give the official per-cloud outputs: the FPS start index is the
    cloud's position in point-e's device batch (4 here), counted over the stream."""
    _, _, clouds, outputs = official
    net = load_eval_pointnet(pointnet_file)
    assert (net.num_classes, net.width, net.feature_dim) == (40, 2, 512) and not net.training
    batch, parts = int(outputs["device_batch_size"]), [0, 3, 8, 10]
    features, logits = zip(*(features_and_logits(net, clouds[i:j], i, batch) for i, j in zip(parts, parts[1:])))
    np.testing.assert_allclose(torch.cat(features).numpy(), outputs["features"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.cat(logits).softmax(-1).numpy(), outputs["preds"], atol=1e-5, rtol=0)
    wrong, _ = features_and_logits(net, clouds[1:4], 0, device_batch_size=1)     # every cloud started at 0
    assert np.abs(wrong.numpy() - outputs["features"][1:4]).max() > 1e-3


def test_clouds_are_normalised_as_point_e_does_at_fps_near_ties(official, pointnet_file):
    """Point-e normalises float32 clouds in float32 (NumPy). Cloud 11 of the unit-cube set A sits on a near-tie
    of farthest-point sampling: normalised in float64 instead (differences ~1e-6) it takes another centre and
    its features move by 0.012. Clouds 10-12 of the set, at their positions 10-12 in point-e's device batch of 64."""
    _, _, _, outputs = official
    cube = torch.from_numpy(fixture.unit_cube_clouds())
    features, logits = features_and_logits(load_eval_pointnet(pointnet_file), cube[10:13], 10, 64)
    np.testing.assert_allclose(features.numpy(), outputs["cube_features_a"][10:13], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.softmax(-1).numpy(), outputs["cube_preds_a"][10:13], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_scores_of_clouds_equal_point_e_evaluate_pfid_and_pis(official, pointnet_file):
    """P-FID(A, B) and P-IS(B) of the 70 unit-cube clouds, each set streamed from its first cloud in parts, equal
    point-e's evaluate_pfid.py / evaluate_pis.py (about a minute on one CPU core)."""
    _, _, _, outputs = official
    cube = torch.from_numpy(fixture.unit_cube_clouds())
    net = load_feature_network(pointnet_file)
    fid, pis = PointFID(net, device_batch_size=64), PointIS(net, device_batch_size=64)
    for part in torch.split(cube[:35], [20, 15]):
        fid.update(part, real=True)
    for part in torch.split(cube[35:], [10, 25]):
        fid.update(part)
        pis.update(part)
    np.testing.assert_allclose(torch.cat(fid.real_features).numpy(), outputs["cube_features_a"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(torch.cat(fid.fake_features).numpy(), outputs["cube_features_b"], atol=1e-5, rtol=0)
    assert fid.compute().item() == pytest.approx(float(outputs["cube_p_fid"]), rel=1e-6)
    assert pis.compute()[0].item() == pytest.approx(float(outputs["cube_p_is"]), rel=1e-6)


def test_metrics_run_the_network_as_point_e(official, pointnet_file):
    _, _, clouds, outputs = official
    net = load_feature_network(pointnet_file)
    fid = PointFID(net, device_batch_size=4)
    for part in torch.split(clouds[:4], [1, 3]):
        fid.update(torch.cat([part.transpose(1, 2), torch.zeros_like(part.transpose(1, 2))], 1))   # [B,6,N]
    np.testing.assert_allclose(torch.cat(fid.fake_features).numpy(), outputs["features"][:4], atol=1e-5, rtol=0)
    pis = PointIS(net, device_batch_size=4)
    for part in torch.split(clouds[:2], [1, 1]):
        pis.update(part)
    np.testing.assert_allclose(torch.cat(pis.logits).softmax(-1).numpy(), outputs["preds"][:2], atol=1e-5, rtol=0)


def test_scores_equal_point_e_fid_is(official):
    _, _, _, outputs = official
    a, b = fixture.random_feature_sets()
    assert frechet_distance(*fid_statistics(a), *fid_statistics(b)) == pytest.approx(float(outputs["p_fid"]),
                                                                                        rel=1e-9)
    fid = PointFID(PointNet2SSG(40, 1).eval(), feature_dim=32)
    fid.update(features=torch.from_numpy(a[:250]), real=True)
    fid.update(features=torch.from_numpy(a[250:]), real=True)
    fid.update(features=torch.from_numpy(b))
    assert fid.compute().item() == pytest.approx(float(outputs["p_fid"]), rel=1e-6)
    log_p = torch.from_numpy(np.log(fixture.random_predictions()))
    assert inception_score_splits(log_p).mean().item() == pytest.approx(float(outputs["p_is"]), rel=1e-9)
    pis = PointIS(PointNet2SSG(40, 1).eval())
    pis.update(logits=log_p)                   # log-probabilities are logits of the same softmax
    assert pis.compute()[0].item() == pytest.approx(float(outputs["p_is"]), rel=1e-6)


def test_ball_query_takes_the_lowest_indices_within_the_radius():
    g = torch.Generator().manual_seed(3)
    xyz, centres = torch.rand(2, 300, 3, generator=g), torch.rand(2, 7, 3, generator=g)
    idx = ball_query(xyz, centres, 0.25, 16)
    for b in range(2):
        for m in range(7):
            inside = [i for i in range(300) if ((xyz[b, i] - centres[b, m]) ** 2).sum() <= 0.25 ** 2 + 1e-6]
            expected = inside[:16] + [inside[0]] * max(0, 16 - len(inside)) if inside else None
            if expected is not None and all(abs(((xyz[b, i] - centres[b, m]) ** 2).sum() - 0.0625) > 1e-5
                                            for i in range(300)):
                assert idx[b, m].tolist() == expected


def test_point_counts_are_brought_to_one_size():
    net = PointNet2SSG(40, 1).eval()
    g = torch.Generator().manual_seed(0)
    fid = PointFID(net)
    fid.update(torch.rand(2, 700, 3, generator=g), real=True)
    with pytest.raises(ValueError, match="set num_points"):
        fid.update(torch.rand(2, 600, 3, generator=g))
    fid = PointFID(net, num_points=600)
    fid.update(torch.rand(2, 700, 3, generator=g), real=True)
    fid.update(torch.rand(2, 600, 3, generator=g))
    assert [f.shape for f in fid.real_features + fid.fake_features] == [(2, 256), (2, 256)]
    with pytest.raises(ValueError, match="fewer than num_points=600"):
        fid.update(torch.rand(1, 599, 3, generator=g))


def test_loading_is_strict_and_safe(official, tmp_path):
    _, state, _, _ = official
    missing = {k: v for k, v in state.items() if k != "bn2.running_var"}
    torch.save({"model_state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointMismatchError, match="bn2.running_var"):
        load_eval_pointnet(tmp_path / "missing.pt")
    wrong = {**state, "fc2.weight": torch.zeros(512, 100)}
    torch.save({"model_state_dict": wrong}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointMismatchError, match=r"fc2\.weight.*\(512, 100\).*\(512, 1024\)"):
        load_eval_pointnet(tmp_path / "wrong.pt")
    torch.save({"model_state_dict": state, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "args.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"args\.pt.*argparse\.Namespace"):
        load_eval_pointnet(tmp_path / "args.pt")


def test_tag_and_converter_cli(pointnet_file, tmp_path, monkeypatch, capsys):
    """``eval_feature_network: point_e_pointnet`` finds pointnet.pt in the checkpoint folder; ``lang3d convert
    point-e-pointnet`` writes a file that loads to the same network."""
    monkeypatch.setenv("LANG3D_CACHE", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "pointnet.pt").write_bytes(pointnet_file.read_bytes())
    reference = load_eval_pointnet(pointnet_file).state_dict()
    from_tag = load_eval_pointnet("point_e_pointnet").state_dict()
    lang3d_main(["convert", "point-e-pointnet", "point_e_pointnet", str(tmp_path / "pointnet.ckpt")])
    assert "kept 79 tensors" in capsys.readouterr().out          # every tensor of pointnet_keys.json
    converted = load_feature_network(tmp_path / "pointnet.ckpt").state_dict()
    assert all(torch.equal(v, from_tag[k]) and torch.equal(v, converted[k]) for k, v in reference.items())


def _two_shapes(n: int, seed: int) -> list[dict]:
    """Class 0: points on a sphere; class 1: points in a flat square (random positions and sizes)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        if i % 2 == 0:
            pts = torch.nn.functional.normalize(torch.randn(600, 3, generator=g), dim=-1)
        else:
            pts = torch.cat([torch.rand(600, 2, generator=g) * 2 - 1, torch.zeros(600, 1)], 1)
        samples.append({"points": pts * (0.5 + torch.rand(1, generator=g)) + torch.randn(3, generator=g),
                        "label": torch.tensor(i % 2)})
    return samples


def _train_mode_loss(module: PointNet2Classification, batch: dict) -> float:
    """NLL on ``batch`` in training mode (batch BatchNorm statistics) with fixed dropout masks and FPS starts."""
    torch.manual_seed(123)
    with torch.no_grad():
        logits, _ = module.net.train()(normalize_clouds(batch["points"]))
    return torch.nn.functional.nll_loss(logits.log_softmax(-1), batch["label"]).item()


@pytest.mark.learning
def test_training_with_the_official_architecture_learns_and_reloads(tmp_path, learning_seed):
    """The project trains its own network of point-e's layout (no official file needed): a few steps fit a batch,
    and the checkpoint loads (safe loading, strict) into the evaluation network with the same outputs."""
    samples = _two_shapes(4, learning_seed)
    batch = {"points": torch.stack([s["points"] for s in samples]), "label": torch.stack([s["label"] for s in samples])}
    torch.manual_seed(learning_seed)
    module = PointNet2Classification(num_classes=2, width=1, lr=3e-3)
    before = _train_mode_loss(module, batch)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples, batch_size=4))
    assert _train_mode_loss(module, batch) < 0.5 * before
    trainer.save_checkpoint(tmp_path / "pn2.ckpt")
    net = load_feature_network(tmp_path / "pn2.ckpt")
    module.net.eval()
    torch.testing.assert_close(net.logits(batch["points"]), module.net.logits(batch["points"]), rtol=0, atol=0)
