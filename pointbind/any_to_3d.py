"""Point-Bind any-to-3D: a joint-space embedding of text, an image or a point cloud conditions a Point-E
vector-conditioned model (one unit-norm CLIP ViT-L/14 vector, 768-d) to generate a coloured point cloud.

The Point-Bind paper decodes joint-space embeddings with CLIP-Forge; Point-E's released vector models are
conditioned on exactly the CLIP ViT-L/14 space Point-Bind aligns to and generate coloured clouds, so they are used
here. CLIP image vectors and text vectors lie in different regions of that space (the modality gap), and each Point-E
vector model was trained on one kind: text embeddings go to base40M-textvec, image embeddings to
base40M-imagevec, and point-cloud embeddings (aligned to both) to either, chosen by ``points_route``.

The joint space must be the one the models were trained on (open_clip ``ViT-L-14`` / ``openai``, 768-d): a
Point-Bind model aligned to another CLIP gives embeddings of another width, which ``generate`` rejects.

Command line (a Point-Bind checkpoint written by ``lightning fit``, official Point-E weights):

    python -m pointbind.any_to_3d --pointbind-checkpoint runs/pointbind/checkpoints/last.ckpt \\
        --textvec-checkpoint base_40m_textvec.pt --imagevec-checkpoint base_40m_imagevec.pt \\
        --upsampler-checkpoint upsample_40m.pt --points-route image \\
        --text "a red chair" --image chair.png --points airplane.ply --output-dir runs/any_to_3d \\
        --tensorboard runs/any_to_3d/tensorboard

Writes ``<output-dir>/NNNN_<source>.ply|.npz`` per input (``lang3d.models.point_e.cloud_files.write_cloud`` layout) and,
with ``--tensorboard``, each cloud as a TensorBoard mesh (``add_mesh``).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from plyfile import PlyData
from torch import nn

from lang3d.data.image_files import read_image
from lang3d.data.point_ops import farthest_point_sample, normalize_unit_sphere
from lang3d.models.point_e import GaussianDiffusion, PointCloudSampler, build_model, load_official_checkpoint
from lang3d.models.point_e.cloud_files import slug, write_cloud
from lang3d.models.point_e.sampler import BASE_STAGE, UPSAMPLE_STAGE
from lang3d.visual.tensorboard import log_point_cloud


class EmbeddingWidthMismatch(ValueError):
    """The joint-space embeddings are not as wide as the CLIP vector the Point-E model is conditioned on."""


class PointCloudFileError(ValueError):
    """A point-cloud input file that cannot be used; the message names the file."""


ROUTES = {"text": "base40M-textvec", "image": "base40M-imagevec"}   # embedding kind -> the Point-E model it feeds


class AnyTo3D(nn.Module):
    """Point-E base40M-textvec and base40M-imagevec (+ optional upsampler) conditioned on joint-space embeddings.

    Args:
        textvec_checkpoint / imagevec_checkpoint: official ``base_40m_textvec.pt`` / ``base_40m_imagevec.pt``
            (loaded strictly); None: random init (tests only, or a route that is never used).
        upsampler_checkpoint: official ``upsample_40m.pt``; None: no upsampler unless ``upsampler_options`` is
            given (then a random one, tests only).
        base_options / upsampler_options: ``build_model`` overrides (e.g. ``width=32, layers=1, vector_width=16``).
        points_route: which model decodes point-cloud embeddings, "text" (textvec) or "image" (imagevec).
        base_points / upsample_points: points drawn by the base stage (Point-E: 1024) and the upsampler (3072).
    """

    def __init__(self, textvec_checkpoint: str | Path | None = None, imagevec_checkpoint: str | Path | None = None,
                 upsampler_checkpoint: str | Path | None = None, base_options: dict | None = None,
                 upsampler_options: dict | None = None, points_route: str = "text", base_points: int = 1024,
                 upsample_points: int = 3072):
        super().__init__()
        if points_route not in ROUTES:
            raise ValueError(f"points_route must be one of {sorted(ROUTES)}, got {points_route!r}")
        self.points_route = points_route
        self.bases = nn.ModuleDict({route: build_model(name, **(base_options or {})) for route, name in ROUTES.items()})
        for route, checkpoint in (("text", textvec_checkpoint), ("image", imagevec_checkpoint)):
            if checkpoint is not None:
                load_official_checkpoint(self.bases[route], checkpoint)
        self.upsampler = None
        if upsampler_checkpoint is not None or upsampler_options is not None:
            self.upsampler = build_model("upsample", **(upsampler_options or {}))
            if upsampler_checkpoint is not None:
                load_official_checkpoint(self.upsampler, upsampler_checkpoint)
        self.base_points, self.upsample_points = base_points, upsample_points
        self.eval()

    @property
    def vector_width(self) -> int:
        """Width of the CLIP vector the base models are conditioned on (768 for Point-E's)."""
        return self.bases["text"].vector_width

    def sampler(self, route: str, guidance_scale: float = 3.0, steps: int = 64) -> PointCloudSampler:
        """Point-E's vector-model sampler for ``route``'s model: guided base stage (σ_max 120, churn 3), then the
        upsampler unguided and conditioned on the base points only (σ_max 160), both with ``steps`` Karras steps."""
        models, diffusions = [self.bases[route]], [GaussianDiffusion.from_schedule("cosine")]
        stages = [replace(BASE_STAGE, num_points=self.base_points, guidance_scale=guidance_scale, steps=steps)]
        if self.upsampler is not None:
            models.append(self.upsampler)
            diffusions.append(GaussianDiffusion.from_schedule("linear"))
            stages.append(replace(UPSAMPLE_STAGE, num_points=self.upsample_points, guidance_scale=0.0, steps=steps,
                                  cond_keys=()))
        return PointCloudSampler(models, diffusions, stages)

    @torch.no_grad()
    def generate(self, embeddings: torch.Tensor, route: str, guidance_scale: float = 3.0, steps: int = 64,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Joint-space embeddings [B,D] (any norm) of kind ``route`` ("text" or "image") -> clouds [B,6,P]: xyz in
        Point-E data units (about ±0.5), RGB 0..255 (clamped), from that route's model. The embeddings are
        L2-normalised and given as the CLIP vector condition (the model multiplies it by sqrt(D)).
        P = base_points (+ upsample_points). ``generator`` on the models' device."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {sorted(ROUTES)}, got {route!r}")
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [B, D], got {tuple(embeddings.shape)}")
        if embeddings.shape[1] != self.vector_width:
            raise EmbeddingWidthMismatch(
                f"joint-space embeddings are {embeddings.shape[1]}-d but the Point-E {ROUTES[route]} model is "
                f"conditioned on {self.vector_width}-d CLIP vectors: align Point-Bind to the CLIP the model was "
                f"trained with (ViT-L-14 / openai, 768-d)")
        device = self.bases[route].input_proj.weight.device
        vector = F.normalize(embeddings.detach().float(), dim=-1).to(device)
        return self.sampler(route, guidance_scale, steps).sample(len(vector), {"vector": vector}, generator)

    def from_text(self, point_bind, texts: Sequence[str], **kwargs) -> torch.Tensor:
        """Text-to-3D: ``point_bind.embed_texts(texts)`` -> base40M-textvec -> [B,6,P]."""
        return self.generate(point_bind.embed_texts(list(texts)), "text", **kwargs)

    def from_images(self, point_bind, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """Image-to-3D: uint8 [B,H,W,3] -> ``point_bind.embed_images`` -> base40M-imagevec -> [B,6,P]."""
        return self.generate(point_bind.embed_images(images), "image", **kwargs)

    def from_points(self, point_bind, points: torch.Tensor, **kwargs) -> torch.Tensor:
        """3D-to-3D: points [B,N,3] (any placement; centred and scaled into the unit sphere here) -> the Point-Bind
        encoder's joint-space embedding (eval mode) -> the ``points_route`` model -> [B,6,P]."""
        was_training = point_bind.training
        point_bind.eval()
        try:
            with torch.no_grad():
                embeddings = point_bind(normalize_unit_sphere(points.float()).to(point_bind.device))
        finally:
            point_bind.train(was_training)
        return self.generate(embeddings, self.points_route, **kwargs)


def write_clouds(clouds: torch.Tensor | np.ndarray, out_dir: str | Path, names: Sequence[str],
                 sources: Sequence[str], formats: Sequence[str] = ("ply", "npz")) -> list[list[Path]]:
    """Write clouds [B,6,P] (xyz data units, RGB 0..255) as ``<out_dir>/<name>.ply|.npz`` with
    ``lang3d.models.point_e.cloud_files.write_cloud`` (``sources[i]`` stored as the npz ``prompt``). Returns the files
    per cloud."""
    clouds = clouds.detach().cpu().numpy() if torch.is_tensor(clouds) else np.asarray(clouds)
    if clouds.ndim != 3 or clouds.shape[1] != 6 or not len(clouds) == len(names) == len(sources):
        raise ValueError(f"need clouds [B,6,P] with one name and source each, got {clouds.shape}, {len(names)} "
                         f"names, {len(sources)} sources")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_cloud(out_dir / name, cloud, source, tuple(formats))
            for name, source, cloud in zip(names, sources, clouds)]


def read_points(path: str | Path, num_points: int) -> torch.Tensor:
    """A point-cloud file -> [num_points,3] float32 xyz, farthest-point sampled when it holds more points.

    Formats: ``.ply`` (vertex x,y,z), ``.npy`` ([N,>=3]), ``.npz`` (``coords`` or ``points`` [N,>=3]), ``.txt``
    (ModelNet40: comma- or space-separated rows, xyz first)."""
    path = Path(path)
    if not path.is_file():
        raise PointCloudFileError(f"point-cloud file {path} does not exist")
    try:
        suffix = path.suffix.lower()
        if suffix == ".ply":
            vertex = PlyData.read(str(path))["vertex"]
            xyz = np.stack([vertex[c] for c in "xyz"], axis=1)
        elif suffix == ".npy":
            xyz = np.load(path)
        elif suffix == ".npz":
            with np.load(path) as data:
                key = next((k for k in ("coords", "points") if k in data), None)
                if key is None:
                    raise PointCloudFileError(f"point-cloud file {path} holds neither 'coords' nor 'points' "
                                              f"(keys: {', '.join(data.files)})")
                xyz = data[key]
        elif suffix == ".txt":
            xyz = np.loadtxt(path, delimiter="," if "," in path.read_text().split("\n", 1)[0] else None, ndmin=2)
        else:
            raise PointCloudFileError(f"point-cloud file {path}: unknown format {suffix!r} (.ply, .npy, .npz, .txt)")
    except (OSError, ValueError, KeyError) as err:
        if isinstance(err, PointCloudFileError):
            raise
        raise PointCloudFileError(f"point-cloud file {path} could not be read ({err})") from None
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] < 3 or not np.isfinite(xyz[:, :3]).all():
        raise PointCloudFileError(f"point-cloud file {path} must hold finite [N, >=3] xyz rows, got {xyz.shape}")
    if len(xyz) < num_points:
        raise PointCloudFileError(f"point-cloud file {path} holds {len(xyz)} points, fewer than the "
                                  f"{num_points} the encoder takes")
    points = torch.from_numpy(np.ascontiguousarray(xyz[:, :3]))
    if len(points) > num_points:
        points = points[farthest_point_sample(points[None], num_points)[0]]
    return points


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pointbind.any_to_3d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pointbind-checkpoint", required=True, help="PointBindAlignment Lightning checkpoint")
    parser.add_argument("--textvec-checkpoint", help="official Point-E base_40m_textvec.pt (text inputs)")
    parser.add_argument("--imagevec-checkpoint", help="official Point-E base_40m_imagevec.pt (image inputs)")
    parser.add_argument("--points-route", choices=sorted(ROUTES), default="text",
                        help="which model decodes point-cloud embeddings: text (textvec) or image (imagevec)")
    parser.add_argument("--upsampler-checkpoint", help="official Point-E upsample_40m.pt (none: 1024 points)")
    parser.add_argument("--text", action="append", default=[], help="a text prompt (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    parser.add_argument("--points", action="append", default=[], help="a point-cloud file (repeatable)")
    parser.add_argument("--num-points", type=int, default=8192, help="points given to the Point-Bind encoder")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=64, help="Karras steps per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/any_to_3d")
    parser.add_argument("--formats", nargs="+", default=["ply", "npz"], choices=["ply", "npz"])
    parser.add_argument("--tensorboard", help="folder of a TensorBoard log receiving the clouds as meshes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not (args.text or args.image or args.points):
        parser.error("give at least one --text, --image or --points")
    routes = [route for route, inputs in (("text", args.text), ("image", args.image),
                                          (args.points_route, args.points)) if inputs]
    for route in sorted(set(routes)):
        if getattr(args, f"{route}vec_checkpoint") is None:
            parser.error(f"--{route}vec-checkpoint is needed: {route} embeddings go to base40M-{route}vec")
    return args


def main(argv: Sequence[str] | None = None) -> list[list[Path]]:
    """Command-line entry: embeds every input with Point-Bind, generates, writes (and logs) the clouds."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from pointbind.module import PointBindAlignment

    args = _parse(argv)
    device = torch.device(args.device)
    point_bind = PointBindAlignment.load_from_checkpoint(args.pointbind_checkpoint, map_location=device).eval()
    any3d = AnyTo3D(args.textvec_checkpoint, args.imagevec_checkpoint, args.upsampler_checkpoint,
                    points_route=args.points_route).to(device)
    groups, sources = [], []   # (embeddings [b,D], route) in input order
    if args.text:
        groups.append((point_bind.embed_texts(args.text), "text"))
        sources += [f"text: {t}" for t in args.text]
    if args.image:
        images = [torch.from_numpy(read_image(p)) for p in args.image]
        groups.append((torch.cat([point_bind.embed_images(image[None]) for image in images]), "image"))  # sizes differ
        sources += [f"image: {p}" for p in args.image]
    if args.points:
        clouds = torch.stack([read_points(p, args.num_points) for p in args.points])
        with torch.no_grad():
            groups.append((point_bind(normalize_unit_sphere(clouds).to(device)), args.points_route))
        sources += [f"points: {p}" for p in args.points]
    generator = torch.Generator(device).manual_seed(args.seed)
    clouds = torch.cat([any3d.generate(embeddings, route, args.guidance_scale, args.steps, generator)
                        for embeddings, route in groups])
    names = [f"{i:04d}_{slug(s)}" for i, s in enumerate(sources)]
    files = write_clouds(clouds, args.output_dir, names, sources, args.formats)
    if args.tensorboard:
        logger = TensorBoardLogger(args.tensorboard, name="", version="")
        for i, cloud in enumerate(clouds.cpu().numpy()):
            colors = np.clip(np.round(cloud[3:].T), 0, 255).astype(np.uint8)
            log_point_cloud(logger, f"any_to_3d/{names[i]}", cloud[:3].T, colors, 0)
            logger.experiment.add_text(f"any_to_3d/{names[i]}", sources[i], 0)
        logger.experiment.flush()
    for source, written in zip(sources, files):
        print(f"{source} -> {', '.join(map(str, written))}")
    return files


if __name__ == "__main__":
    main()
