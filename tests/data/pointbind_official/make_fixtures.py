"""Golden fixtures of tests/test_checkpoints_pointbind.py, made by running the official code on random weights.

The official code is not part of this project; check it out yourself at these commits:
    ZiyuGuo99/Point-Bind_Point-LLM  7a0448b11939110643b752eb11b31934fba66571
    ZrrSkywalker/I2P-MAE            7d4e519d34d9a84efdaf3420c3797ecb4e9f1d7f
    lulutang0608/Point-BERT         26e0581395b0df2213d80181c4ff38d3971130d2
and run (CPU only; besides the project's .venv it needs einops, easydict, iopath, portalocker, termcolor, e.g.
``pip install --target SITE ...`` and ``PYTHONPATH=SITE``)
    python tests/data/pointbind_official/make_fixtures.py --pointbind DIR --i2pmae DIR --pointbert DIR

What it writes (next to this script):
- ``pointbind_{i2pmae,pointbert}_small.pt``: a release in the official layout (``POINTBIND.state_dict()``) of a
  small configuration, random weights; ``{i2pmae,pointbert}_pretrain_small.pth``: a pre-training checkpoint in
  the official ``save_checkpoint`` layout (base_model, optimizer, epoch, metrics with numpy scalars);
- ``golden.pt``: per case the input points, the FPS start (Point-BERT's is random), and the official outputs:
  the 3D feature (``point_encoder(pc)``) and, for releases, the joint-space embedding
  (``modality_postprocessor_point(modality_head_point(encode_pc(pc)))``); for pre-trainings the feature of the
  official Point-Bind encoder after its own ``load_model_from_ckpt``;
- ``keys_*.json``: every tensor name, shape and dtype of the full-size official models (the real files' layout).

How the official code is run here:
- the CUDA extensions are replaced by plain-torch modules with the same semantics, written to a temporary folder
  first on sys.path: pointnet2_ops ``furthest_point_sample`` (starts at index 0; like the CUDA kernel it never
  picks a point with |p|^2 <= 1e-3 after the first), ``gather_operation``, knn_cuda ``KNN`` (k nearest, sorted),
  and modules the constructors import but these fixtures never call (chamfer distance, torch_scatter, open3d,
  matplotlib, ipdb); ``nn.Module.cuda`` is a no-op;
- Point-Bind's ``I2P_MAE_BIND`` hard-codes its sizes; in a temporary copy of the repository the script rewrites
  those literals (each asserted to occur once) to a small configuration. Configurable classes (Point-BERT's
  ``PointTransformer_BIND``, I2P-MAE's ``I2P_MAE``, Point-BERT's ``Point_BERT``) get small configs;
- models are built on the meta device; the tensors the project keeps are then materialised with random values
  (norm and BatchNorm statistics included, so that every tensor matters), and the tensors the project drops
  (ImageBind's towers, decoders, CLIP, dVAE, momentum encoder, ...) are stored as zero-stride stand-ins
  (``torch.zeros(()).expand(shape)``): real names and shapes, almost no bytes.
Each repository runs in its own subprocess (they share package names: models, utils).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
COMMITS = {"ZiyuGuo99/Point-Bind_Point-LLM": "7a0448b11939110643b752eb11b31934fba66571",
           "ZrrSkywalker/I2P-MAE": "7d4e519d34d9a84efdaf3420c3797ecb4e9f1d7f",
           "lulutang0608/Point-BERT": "26e0581395b0df2213d80181c4ff38d3971130d2"}

# Small configurations, and the same in the project's encoder arguments (pointbind.encoders).
I2P_SMALL = {"num_groups": [64, 32, 16], "group_sizes": [16, 8, 8], "dims": [12, 24, 48], "depths": [2, 1, 1]}
I2P_PROJECT = {"num_groups": [64, 32, 16], "group_sizes": [16, 8, 8], "dims": [12, 24, 48], "depths": [2, 1, 1],
               "heads": 6, "local_radius": [0.24, 0.48, 0.96], "tokenizer_hidden": [128, 256, 512]}
BERT_SMALL = {"trans_dim": 24, "depth": 2, "drop_path_rate": 0.1, "cls_dim": 40, "num_heads": 6, "group_size": 16,
              "num_group": 32, "encoder_dims": 32}
BERT_PROJECT = {"num_groups": 32, "group_size": 16, "tokenizer_dim": 32, "tokenizer_hidden": [128, 256, 512],
                "width": 24, "depth": 2, "heads": 6, "pos_hidden": 128}
TINY_IMAGEBIND = dict(out_embed_dim=16, vision_embed_dim=32, vision_num_blocks=1, vision_num_heads=2,
                      text_embed_dim=32, text_num_blocks=1, text_num_heads=2, audio_embed_dim=32, audio_num_blocks=1,
                      audio_num_heads=2, depth_embed_dim=32, depth_num_blocks=1, depth_num_heads=2,
                      thermal_embed_dim=32, thermal_num_blocks=1, thermal_num_heads=2, imu_embed_dim=32,
                      imu_num_blocks=1, imu_num_heads=2)
BATCH, POINTS = 2, 512

STUBS = {
    "pointnet2_ops/__init__.py": "",
    "pointnet2_ops/pointnet2_utils.py": '''
        import torch

        def furthest_point_sample(xyz, npoint):
            """As pointnet2_ops' CUDA kernel: start at 0, then the point farthest from those taken; points with
            |p|^2 <= 1e-3 are skipped as candidates."""
            b, n, _ = xyz.shape
            x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
            candidate = (x * x + y * y + z * z) > 1e-3
            idx = torch.zeros(b, npoint, dtype=torch.long)
            temp = torch.full((b, n), 1e10)
            rows = torch.arange(b)
            for i in range(1, npoint):
                last = xyz[rows, idx[:, i - 1]]
                d = (x - last[:, 0:1]) * (x - last[:, 0:1]) + (y - last[:, 1:2]) * (y - last[:, 1:2]) \\
                    + (z - last[:, 2:3]) * (z - last[:, 2:3])
                temp = torch.where(candidate, torch.minimum(temp, d), temp)
                idx[:, i] = torch.where(candidate, temp, torch.full_like(temp, -1.0)).argmax(-1)
            return idx.int()

        def gather_operation(features, idx):
            return features.gather(2, idx.long()[:, None].expand(-1, features.shape[1], -1))
    ''',
    "knn_cuda/__init__.py": '''
        import torch
        from torch import nn

        class KNN(nn.Module):
            def __init__(self, k, transpose_mode=False):
                super().__init__()
                self.k, self.transpose_mode = k, transpose_mode

            def forward(self, ref, query):
                if not self.transpose_mode:
                    ref, query = ref.transpose(1, 2), query.transpose(1, 2)
                d = torch.cdist(query, ref, compute_mode="donot_use_mm_for_euclid_dist")
                dist, idx = d.topk(self.k, dim=-1, largest=False, sorted=True)
                if not self.transpose_mode:
                    dist, idx = dist.transpose(1, 2), idx.transpose(1, 2)
                return dist, idx
    ''',
    "extensions/__init__.py": "",
    "extensions/chamfer_dist/__init__.py": '''
        from torch import nn

        class ChamferDistanceL1(nn.Module):
            pass

        class ChamferDistanceL2(nn.Module):
            pass
    ''',
    "torch_scatter/__init__.py": "def scatter(*args, **kwargs):\n    raise NotImplementedError\n",
    "open3d/__init__.py": "",
    "ipdb/__init__.py": "",
    "matplotlib/__init__.py": "",
    "matplotlib/pyplot.py": "",
    "mpl_toolkits/__init__.py": "",
    "mpl_toolkits/mplot3d/__init__.py": "Axes3D = None\n",
}


# ---------------------------------------------------------------------------------------------- shared helpers
class MetaTensors(torch.overrides.TorchFunctionMode):
    """Tensor factories called without a device make meta tensors (parameters and buffers of models built in
    this mode take no memory); unlike ``torch.device("meta")``, ``linspace`` / ``arange`` stay real, so the
    constructors' ``.item()`` on drop-path rates works."""

    FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand, torch.full, torch.tensor}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def install_stubs(folder: Path) -> None:
    for name, text in STUBS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(folder))
    nn.Module.cuda = lambda self, *args, **kwargs: self


def standin(t: torch.Tensor) -> torch.Tensor:
    """A zero-stride tensor of ``t``'s shape and dtype: real layout, one stored element."""
    return torch.zeros((), dtype=t.dtype).expand(t.shape)


@torch.no_grad()
def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Materialise ``module`` on the CPU with random values in every tensor (norm affine parameters and BatchNorm
    statistics included)."""
    module.to_empty(device="cpu")
    done = set()
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
            if m.weight is not None:
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(1000)
        elif isinstance(m, (nn.Linear, nn.Conv1d)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        else:
            continue
        done.update(id(t) for t in m.state_dict(keep_vars=True).values())
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) not in done:
            t.copy_(0.5 * torch.randn(t.shape, generator=gen))


def cloud(gen: torch.Generator) -> torch.Tensor:
    """[BATCH, POINTS, 3] random points at radius 0.3-1 (none near the origin, where pointnet2's FPS skips)."""
    d = torch.nn.functional.normalize(torch.randn(BATCH, POINTS, 3, generator=gen), dim=-1)
    return d * (0.3 + 0.7 * torch.rand(BATCH, POINTS, 1, generator=gen))


def key_list(state: dict) -> dict:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in state.items()}


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")


def numpy_safe_globals() -> list:
    scalar = np.float64(0).__reduce__()[0]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            type(np.dtype(np.float64))]


def training_checkpoint(state: dict, acc: float) -> dict:
    """The official ``save_checkpoint`` layout (Point-BERT / I2P-MAE tools/builder.py); the optimizer state of
    an AdamW that has not stepped (its param groups), the SVM accuracy as numpy float64 (evaluate_svm)."""
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=5e-4, weight_decay=0.05)
    return {"base_model": state, "optimizer": opt.state_dict(), "epoch": 299,
            "metrics": {"acc": np.float64(acc)}, "best_metrics": {"acc": np.float64(acc)}}


# ---------------------------------------------------------------------------------------------- I2P-MAE repo
def part_i2pmae(repo: Path, out: Path) -> None:
    from easydict import EasyDict
    sys.path.insert(1, str(repo))
    import clip_attn
    from clip_attn.model import CLIP

    def clip_load(name, *args, **kwargs):  # the frozen CLIP ViT-B/16 (its download replaced by the architecture)
        assert name == "ViT-B/16"
        return CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12), None

    clip_attn.load = clip_load
    from models.I2P_MAE import I2P_MAE

    def config(small: bool) -> EasyDict:
        c = {"NAME": "I2P_MAE", "mask_ratio": 0.8, "group_sizes": [16, 8, 8], "num_groups": [512, 256, 64],
             "encoder_depths": [5, 5, 5], "encoder_dims": [96, 192, 384], "local_radius": [0, 0, 0],
             "decoder_depths": [1, 1], "decoder_dims": [384, 192], "decoder_up_blocks": [1, 1],
             "drop_path_rate": 0.1, "num_heads": 6, "clip_config": {"visual_encoder": "ViT-B/16", "feat_dim": 512}}
        if small:
            c.update(group_sizes=I2P_SMALL["group_sizes"], num_groups=I2P_SMALL["num_groups"],
                     encoder_depths=I2P_SMALL["depths"], encoder_dims=I2P_SMALL["dims"], decoder_dims=[48, 24])
        return EasyDict(c)

    with MetaTensors():
        full, small = I2P_MAE(config(False)), I2P_MAE(config(True))  # cfgs/pre-training/i2p-mae.yaml
    write_json(out / "keys_i2pmae_pretrain.json", key_list(full.state_dict()))
    gen = torch.Generator().manual_seed(1)
    for part in ("token_embed", "encoder_pos_embeds", "encoder_blocks"):
        randomise(getattr(small.h_encoder, part), gen)
    kept = ("h_encoder.token_embed.", "h_encoder.encoder_pos_embeds.", "h_encoder.encoder_blocks.")
    state = {k: v if k.startswith(kept) else standin(v) for k, v in small.state_dict().items()}
    torch.save(training_checkpoint(state, 0.9335), out / "i2pmae_pretrain_small.pth")


# ---------------------------------------------------------------------------------------------- Point-BERT repo
def part_pointbert(repo: Path, out: Path, scratch: Path) -> None:
    from easydict import EasyDict
    sys.path.insert(1, str(repo))
    from models.dvae import DiscreteVAE
    from models.Point_BERT import Point_BERT

    def config(small: bool) -> EasyDict:  # cfgs/Mixup_models/Point-BERT.yaml
        transformer = {"mask_ratio": [0.25, 0.45], "trans_dim": 384, "depth": 12, "drop_path_rate": 0.1,
                       "cls_dim": 512, "replace_pob": 0.0, "num_heads": 6, "moco_loss": False, "dvae_loss": True,
                       "cutmix_loss": True, "return_all_tokens": False}
        dvae = {"group_size": 32, "num_group": 64, "encoder_dims": 256, "num_tokens": 8192, "tokens_dims": 256,
                "decoder_dims": 256}
        if small:
            transformer.update(trans_dim=BERT_SMALL["trans_dim"], depth=BERT_SMALL["depth"], cls_dim=32)
            dvae.update(group_size=BERT_SMALL["group_size"], num_group=BERT_SMALL["num_group"],
                        encoder_dims=BERT_SMALL["encoder_dims"], num_tokens=128, tokens_dims=32, decoder_dims=32)
        ckpt = scratch / f"dvae_{'small' if small else 'full'}.pth"  # the dVAE Point_BERT loads (stand-ins)
        with MetaTensors():
            dvae_model = DiscreteVAE(EasyDict(dvae))
        torch.save({"base_model": {k: standin(v) for k, v in dvae_model.state_dict().items()}}, ckpt)
        return EasyDict({"NAME": "Point_BERT", "m": 0.999, "T": 0.07, "K": 16384 if not small else 64,
                         "transformer_config": transformer, "dvae_config": {**dvae, "ckpt": str(ckpt)}})

    with MetaTensors():
        full, small = Point_BERT(config(False)), Point_BERT(config(True))
    write_json(out / "keys_pointbert_pretrain.json", key_list(full.state_dict()))
    q = small.transformer_q
    gen = torch.Generator().manual_seed(2)
    for part in (q.encoder, q.reduce_dim, q.pos_embed, q.blocks, q.norm):
        randomise(part, gen)
    with torch.no_grad():
        for name in ("cls_token", "cls_pos"):
            setattr(q, name, nn.Parameter(0.5 * torch.randn(getattr(q, name).shape, generator=gen)))
    head = ("transformer_q.cls_head.", "transformer_q.lm_head.", "transformer_q.mask_token")
    state = {f"module.{k}": v if k.startswith("transformer_q.") and not k.startswith(head) else standin(v)
             for k, v in small.state_dict().items()}  # trained under DataParallel: "module." prefix
    torch.save(training_checkpoint(state, 0.8761), out / "pointbert_pretrain_small.pth")


# ---------------------------------------------------------------------------------------------- Point-Bind repo
SMALL_LITERALS = {  # models/i2p_mae/I2P_MAE.py, full -> small
    "self.encoder_depths = [5, 5, 5]": f"self.encoder_depths = {I2P_SMALL['depths']}",
    "self.encoder_dims = [96, 192, 384]": f"self.encoder_dims = {I2P_SMALL['dims']}",
    "self.group_sizes = [48, 24, 24]": f"self.group_sizes = {I2P_SMALL['group_sizes']}",
    "self.num_groups = [512, 256, 64]": f"self.num_groups = {I2P_SMALL['num_groups']}",
    "self.feat_dim = 384": f"self.feat_dim = {I2P_SMALL['dims'][-1]}",
}


def part_pointbind(repo: Path, out: Path, small: bool) -> None:
    sys.path.insert(1, str(repo))
    import os
    os.chdir(repo)
    from easydict import EasyDict
    from imagebind import imagebind_model
    from models import PointBind_models
    from models.i2p_mae.I2P_MAE import I2P_MAE_BIND
    from models.pointbert.point_encoder import PointTransformer_BIND
    from models.PointBind_models import POINTBIND

    bert_full = PointBind_models.cfg_from_yaml_file(PointBind_models.POINTBERT_CONFIG).model
    if not small:  # full-size key lists (POINTBIND with ImageBind-Huge, as PointBind_I2PMAE / PointBind_PointBERT)
        with MetaTensors():
            i2p = POINTBIND(I2P_MAE_BIND(), pc_feat_dims=384)
            bert = POINTBIND(PointTransformer_BIND(bert_full, args=None), pc_feat_dims=768)
        write_json(out / "keys_pointbind_i2pmae.json", key_list(i2p.state_dict()))
        write_json(out / "keys_pointbind_pointbert.json", key_list(bert.state_dict()))
        return

    imagebind_model.imagebind_huge = lambda: imagebind_model.ImageBindModel(**TINY_IMAGEBIND)
    bert_small = EasyDict({**bert_full, **BERT_SMALL})
    golden = {}
    gen = torch.Generator().manual_seed(3)
    for case, make, dims in (("pointbind_i2pmae", I2P_MAE_BIND, I2P_SMALL["dims"][-1]),
                             ("pointbind_pointbert", lambda: PointTransformer_BIND(bert_small, args=None),
                              2 * BERT_SMALL["trans_dim"])):
        with MetaTensors():
            model = POINTBIND(make(), pc_feat_dims=dims)
        randomise(model.point_encoder, gen)
        randomise(model.bind.modality_head_point, gen)
        model.bind.modality_postprocessor_point.to_empty(device="cpu")
        with torch.no_grad():
            model.bind.modality_postprocessor_point[1].log_logit_scale.fill_(math.log(1.0))  # its fixed value
            model.pc_projection = nn.Parameter(torch.randn(dims, 512, generator=gen) / math.sqrt(dims))
            model.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07) + 0.1))
        model.eval()
        points = cloud(gen)
        seed = 1234
        torch.manual_seed(seed)
        start = torch.randint(0, POINTS, (BATCH,), dtype=torch.long)  # Point-BERT's misc.fps draws this first
        with torch.no_grad():
            torch.manual_seed(seed)
            feature = model.point_encoder(points)
            torch.manual_seed(seed)
            embedding = model.bind.modality_postprocessor_point(model.bind.modality_head_point(model.encode_pc(points)))
        head = "bind.modality_head_point."
        state = {k: v if not k.startswith("bind.") or k.startswith(head) else standin(v)
                 for k, v in model.state_dict().items()}
        torch.save(state, out / f"{case}_small.pt")
        golden[case] = {"points": points, "fps_start": start if "pointbert" in case else torch.zeros(BATCH).long(),
                        "feature": feature, "embedding": embedding}

    # pre-trained encoders through the official loaders of Point-Bind's encoders
    for case, make in (("i2pmae_pretrain", I2P_MAE_BIND),
                       ("pointbert_pretrain", lambda: PointTransformer_BIND(bert_small, args=None))):
        torch.manual_seed(0)
        encoder = make()
        with torch.serialization.safe_globals(numpy_safe_globals()):
            encoder.load_model_from_ckpt(str(out / f"{case}_small.pth"))
        encoder.eval()
        points = cloud(gen)
        torch.manual_seed(seed)
        start = torch.randint(0, POINTS, (BATCH,), dtype=torch.long)
        with torch.no_grad():
            torch.manual_seed(seed)
            feature = encoder(points)
        golden[case] = {"points": points, "fps_start": start if "pointbert" in case else torch.zeros(BATCH).long(),
                        "feature": feature}
    golden["options"] = {"i2pmae": json.dumps(I2P_PROJECT), "pointbert": json.dumps(BERT_PROJECT),
                         "embed_dim": str(TINY_IMAGEBIND["out_embed_dim"])}
    torch.save(golden, out / "golden.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pointbind", type=Path, help="checkout of ZiyuGuo99/Point-Bind_Point-LLM")
    parser.add_argument("--i2pmae", type=Path, help="checkout of ZrrSkywalker/I2P-MAE")
    parser.add_argument("--pointbert", type=Path, help="checkout of lulutang0608/Point-BERT")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:  # one repository, in this subprocess
        install_stubs(args.scratch / "stubs")
        {"i2pmae": lambda: part_i2pmae(args.repo, args.out),
         "pointbert": lambda: part_pointbert(args.repo, args.out, args.scratch),
         "pointbind-keys": lambda: part_pointbind(args.repo, args.out, small=False),
         "pointbind-small": lambda: part_pointbind(args.repo, args.out, small=True)}[args.part]()
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        small_copy = scratch / "pointbind_small"
        shutil.copytree(args.pointbind, small_copy)
        source = small_copy / "models" / "i2p_mae" / "I2P_MAE.py"
        text = source.read_text()
        for old, new in SMALL_LITERALS.items():
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        source.write_text(text)
        for part, repo in (("i2pmae", args.i2pmae), ("pointbert", args.pointbert),
                           ("pointbind-keys", args.pointbind), ("pointbind-small", small_copy)):
            print(f"[{part}] {repo}", flush=True)
            subprocess.run([sys.executable, __file__, "--part", part, "--repo", str(repo.resolve()),
                            "--out", str(args.out.resolve()), "--scratch", str(scratch)], check=True)
    write_json(args.out / "SOURCES.json", {"repositories": COMMITS, "script": Path(__file__).name,
                                           "torch": torch.__version__})


if __name__ == "__main__":
    main()
