"""Golden fixture for ``lang3d.models.point_e.eval_pointnet``: runs the OFFICIAL point-e evaluation code on random
weights.

Official code: https://github.com/openai/point-e at commit fc8a607c08a3ea804cc82bf1ef8628f88a3a5d2f
(``point_e/evals/pointnet2_cls_ssg.py``, ``pointnet2_utils.py``, ``feature_extractor.py``, ``fid_is.py``,
``npz_stream.py``). It needs only torch, numpy and scipy. Run with a checkout of that commit on the path (its
``point_e.models.download`` is replaced by a stub that hands the random state dict to ``PointNetClassifier``: no
download, nothing else changed):

    python tests/data/point_e_evals/make_fixture.py --point-e /path/to/point-e --out tests/data/point_e_evals

Writes ``pointnet_keys.json`` (the full-size ``get_model(40, normal_channel=False, width_mult=2)`` state-dict keys
and shapes, i.e. those of ``pointnet.pt``'s ``model_state_dict``) and ``official_outputs.npz``:

- ``features``, ``preds``: ``PointNetClassifier.features_and_preds`` with ``device_batch_size=4`` on the CPU for the
  10 clouds of ``random_clouds`` (mixed shapes, offsets and scales);
- ``cube_features_{a,b}``, ``cube_preds_{a,b}``, ``cube_p_fid``, ``cube_p_is``: ``evaluate_pfid.py`` /
  ``evaluate_pis.py``'s computation (point-e's default ``device_batch_size=64``) for the 70 clouds of
  ``unit_cube_clouds`` split in two sets A = clouds 0-34 and B = 35-69, each streamed from its own npz file as
  the scripts do: P-FID(A, B) and P-IS(B). Point-e normalises these float32 clouds in float32; several FPS
  steps of these clouds are near-ties that float64 normalisation (differences ~1e-6) flips;
- ``p_fid``, ``p_is``: P-FID and P-IS of seeded random feature sets and predictions from ``fid_is``.

Weights and clouds come from NumPy's legacy ``RandomState`` (whose stream never changes), so the test rebuilds
them from their seeds instead of storing 24 MB of weights and 0.9 MB of clouds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

SEED = 20221220
DEVICE_BATCH_SIZE = 4
NUM_CLOUDS, NUM_POINTS = 10, 1024


def random_state_dict(keys_and_shapes: list[tuple[str, list[int]]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Deterministic random weights for a PointNet++ state dict, key by key in the given order: weights
    ~ N(0, 2/fan_in) (4/fan_in for the last layer, so the class probabilities are not uniform), biases
    ~ 0.01 N(0,1), BatchNorm gammas 1 + 0.1 N, betas and running means 0.01 N, running variances U(0.5, 1.5);
    ``num_batches_tracked`` 0. float32 (int64 for the counter)."""
    rng = np.random.RandomState(seed)
    out = {}
    for key, shape in keys_and_shapes:
        leaf = key.rsplit(".", 1)[-1]
        is_bn = ".mlp_bns." in key or key.split(".")[0] in ("bn1", "bn2")
        if leaf == "num_batches_tracked":
            out[key] = np.zeros(shape, dtype=np.int64)
            continue
        if leaf == "running_var":
            value = rng.uniform(0.5, 1.5, size=shape)
        elif leaf == "running_mean" or (leaf == "bias"):
            value = 0.01 * rng.standard_normal(size=shape)
        elif leaf == "weight" and is_bn:
            value = 1.0 + 0.1 * rng.standard_normal(size=shape)
        else:  # conv / linear weight [out, in, ...]
            gain = 4.0 if key.startswith("fc3.") else 2.0
            value = rng.standard_normal(size=shape) * np.sqrt(gain / np.prod(shape[1:]))
        out[key] = value.astype(np.float32)
    return out


def random_clouds(seed: int = SEED + 1) -> np.ndarray:
    """[10, 1024, 3] float32 clouds of mixed shapes, offsets and scales (not normalised)."""
    rng = np.random.RandomState(seed)
    clouds = []
    for i in range(NUM_CLOUDS):
        pts = rng.standard_normal((NUM_POINTS, 3))
        if i % 2:                                   # points on a sphere, squashed
            pts /= np.linalg.norm(pts, axis=1, keepdims=True)
            pts *= (1.0, 0.5, 0.3)
        clouds.append(pts * rng.uniform(0.2, 3.0) + rng.uniform(-2, 2, size=3))
    return np.stack(clouds).astype(np.float32)


def unit_cube_clouds(seed: int = 2) -> np.ndarray:
    """[70, 1024, 3] float32 clouds uniform in the unit cube (``RandomState(2).rand``)."""
    return np.random.RandomState(seed).rand(70, NUM_POINTS, 3).astype(np.float32)


def random_feature_sets(seed: int = SEED + 2) -> tuple[np.ndarray, np.ndarray]:
    """Two feature sets [400, 32] and [300, 32] (float64) with different means and covariances."""
    rng = np.random.RandomState(seed)
    a = rng.standard_normal((400, 32))
    b = rng.standard_normal((300, 32)) @ (0.5 * rng.standard_normal((32, 32))) + 0.3
    return a, b


def random_predictions(seed: int = SEED + 3) -> np.ndarray:
    """[12000, 40] float64 class probabilities (three P-IS splits of 5000, 5000, 2000)."""
    logits = 3.0 * np.random.RandomState(seed).standard_normal((12000, 40))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--point-e", required=True, help="checkout of openai/point-e at fc8a607c")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the npz files streamed")
    args = parser.parse_args()
    out, scratch = Path(args.out), Path(args.scratch)
    sys.path.insert(0, args.point_e)
    import torch

    holder = {}
    download = types.ModuleType("point_e.models.download")
    download.load_checkpoint = lambda name, device, cache_dir=None: {"model_state_dict": holder["state"]}
    sys.modules["point_e.models.download"] = download
    from point_e.evals.feature_extractor import PointNetClassifier
    from point_e.evals.fid_is import compute_inception_score, compute_statistics
    from point_e.evals.npz_stream import NpzStreamer
    from point_e.evals.pointnet2_cls_ssg import get_model

    torch.set_num_threads(1)
    reference = get_model(num_class=40, normal_channel=False, width_mult=2)
    keys = [(k, list(v.shape)) for k, v in reference.state_dict().items()]
    (out / "pointnet_keys.json").write_text("[\n" + ",\n".join(json.dumps(k) for k in keys) + "\n]\n")
    holder["state"] = {k: torch.from_numpy(v) for k, v in random_state_dict(keys).items()}

    def stream(clouds: np.ndarray, name: str, device_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        path = scratch / f"{name}.npz"
        np.savez(path, clouds)                                  # arr_0, as evaluate_pfid.py reads it
        clf = PointNetClassifier(devices=["cpu"], device_batch_size=device_batch_size)
        return clf.features_and_preds(NpzStreamer(str(path)))

    features, preds = stream(random_clouds(), "mixed", DEVICE_BATCH_SIZE)
    cube = unit_cube_clouds()
    features_a, preds_a = stream(cube[:35], "cube_a", 64)
    features_b, preds_b = stream(cube[35:], "cube_b", 64)
    cube_p_fid = compute_statistics(features_a).frechet_distance(compute_statistics(features_b))
    cube_p_is = compute_inception_score(preds_b)

    a, b = random_feature_sets()
    p_fid = compute_statistics(a).frechet_distance(compute_statistics(b))
    p_is = compute_inception_score(random_predictions())
    np.savez_compressed(out / "official_outputs.npz", features=features, preds=preds, p_fid=np.float64(p_fid),
                        p_is=np.float64(p_is), device_batch_size=DEVICE_BATCH_SIZE, cube_features_a=features_a,
                        cube_preds_a=preds_a, cube_features_b=features_b, cube_preds_b=preds_b,
                        cube_p_fid=np.float64(cube_p_fid), cube_p_is=np.float64(cube_p_is))
    print(f"features {features.shape}, preds {preds.shape}, P-FID {p_fid:.8f}, P-IS {p_is:.8f}; unit-cube clouds: "
          f"P-FID {cube_p_fid:.8f}, P-IS {cube_p_is:.8f}")


if __name__ == "__main__":
    main()
