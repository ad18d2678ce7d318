"""LightningDataModule of Cap3D (point cloud, caption, rendered view) triplets for Point-Bind and SEPE.

Objects are the uids of the caption file(s) whose point cloud exists; they are split into train / val (/ test)
by a hash of the uid, so an object keeps its split whatever the file order or the other objects. Every epoch a
training sample shows one of its object's rendered views, drawn with a generator seeded by (seed, epoch, index);
blank renders are passed over (and counted) in favour of the next drawn view.

Units: Cap3D's clouds are already in Point-E's units (xyz about ±0.5; Cap3D's own Point-E fine-tuning feeds them
unchanged), so they are served unchanged by default; ``normalize=True`` centres each cloud and scales it into the
unit sphere (what point encoders such as Point-Bind's expect).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.cap3d.captions import read_captions
from datamodules.cap3d.objects import RenderedViews, composite, read_point_cloud
from datamodules.synthetic.cap3d import generate_cap3d
from lang3d.data.object_samples import PointSelector, check_cloud, collate_object_samples
from lang3d.data.point_ops import normalize_unit_sphere
from lang3d.data.sampling import EpochSeededDataset, sharded_loader

CAPTION_FILES = {"ABO": ("Cap3D_automated_ABO.csv",),
                 "Objaverse": ("Cap3D_automated_Objaverse_full.csv", "Cap3D_automated_Objaverse.csv")}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Cap3DObject:
    uid: str
    caption: str
    cloud: Path
    views: Path | None  # folder or zip of rendered views; None when images are not used


def split_of(uid: str, fractions) -> int:
    """Split index of ``uid``: u = first 8 bytes of sha256(uid) / 2⁶⁴ in [0,1) falls in cumulative ``fractions``."""
    u = int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return min(int(np.searchsorted(np.cumsum(fractions), u, side="right")), len(fractions) - 1)


def check_fractions(fractions) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) not in (2, 3) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be 2 or 3 non-negative numbers summing to 1 (train, val[, test]), "
                         f"got {fractions}")
    return fractions


def caption_files(root: Path, subset: str | None, captions: str | None = None) -> list[Path]:
    """Caption CSVs to read: ``captions`` (relative to root unless absolute), else the subset's file, looked up in
    ``root`` and ``root/misc`` (None: every subset's file found)."""
    if captions is not None:
        path = Path(captions) if Path(captions).is_absolute() else root / captions
        if not path.is_file():
            raise FileNotFoundError(f"Cap3D caption file {path} does not exist")
        return [path]
    if subset is not None and subset not in CAPTION_FILES:
        raise ValueError(f"subset must be one of {sorted(CAPTION_FILES)} or None, got {subset!r}")
    found = []
    for name in (subset,) if subset else tuple(CAPTION_FILES):
        candidates = [folder / file for file in CAPTION_FILES[name] for folder in (root, root / "misc")]
        found += [next(p for p in candidates if p.is_file())] if any(p.is_file() for p in candidates) else []
    if not found:
        names = [f for s in ((subset,) if subset else CAPTION_FILES) for f in CAPTION_FILES[s]]
        raise FileNotFoundError(f"Cap3D root {root}: none of the caption files {names} (in it or in misc/)")
    return found


def _listing(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"Cap3D {what} folder {folder} does not exist")
    return {entry.name: Path(entry.path) for entry in os.scandir(folder) if not entry.name.startswith(".")}


def index_objects(captions: dict[str, str], point_dir: Path, view_dir: Path | None) -> tuple[list[Cap3DObject],
                                                                                             list[str]]:
    """(objects with a point cloud, uids without one). Clouds are ``<uid>.pt`` or ``<uid>.ply`` in
    ``point_dir``; with ``view_dir`` every such object must have ``<uid>/`` or ``<uid>.zip`` there, else a
    ``FileNotFoundError`` names what is missing."""
    files = _listing(point_dir, "point-cloud")
    views = _listing(view_dir, "rendered-view") if view_dir is not None else {}
    objects, missing = [], []
    for uid, caption in captions.items():
        cloud = files.get(f"{uid}.pt") or files.get(f"{uid}.ply")
        if cloud is None:
            missing.append(uid)
            continue
        source = None
        if view_dir is not None:
            source = views.get(uid) or views.get(f"{uid}.zip")
            if source is None:
                raise FileNotFoundError(f"Cap3D object {uid} ({cloud}) has no rendered views: neither "
                                        f"{view_dir / uid}/ nor {view_dir / uid}.zip exists")
        objects.append(Cap3DObject(uid, caption, cloud, source))
    return objects, missing


class Cap3DObjects(EpochSeededDataset):
    """One split's objects. Sample i: ``points`` float32 [N,3] (``selector``'s N points, in the file's units, or
    centred and scaled into the unit sphere with ``normalize``),
    ``colors`` float32 [N,3] in 0..1, ``caption``, ``uid`` and, with ``load_images``, ``image`` uint8 [H,W,3]
    (one non-blank view, composited over ``background``, resized to ``image_size`` = (H, W)), ``view`` (its id)
    and ``skip_counts`` {"blank_view": k} when k blank views were passed over. An empty or non-finite cloud, or
    an object whose views are all blank, gives ``{"uid", "skipped": reason}``.

    The view of sample i is drawn by ``self.rng(i)``, seeded with (seed, epoch, i).
    """

    def __init__(self, objects: list[Cap3DObject], selector: PointSelector, image_size: tuple[int, int] = (224, 224),
                 background: int = 255, load_images: bool = True, seed: int = 0, normalize: bool = False):
        super().__init__(seed)
        self.normalize = normalize
        self.objects = list(objects)
        self.selector = selector
        self.image_size = tuple(image_size)
        self.background = background
        self.load_images = load_images

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> dict:
        obj = self.objects[index]
        xyz, rgb = read_point_cloud(obj.cloud)
        reason = check_cloud(xyz)
        if reason is not None:
            return {"uid": obj.uid, "skipped": reason}
        idx = self.selector(xyz, obj.uid, str(obj.cloud))
        points = normalize_unit_sphere(xyz[idx].astype(np.float64)) if self.normalize else xyz[idx]
        sample = {"points": points.astype(np.float32),
                  "colors": np.clip(rgb[idx] / 255.0, 0.0, 1.0).astype(np.float32),
                  "caption": obj.caption, "uid": obj.uid}
        if not self.load_images:
            return sample
        views = RenderedViews(obj.views)
        if not views.views:
            raise FileNotFoundError(f"Cap3D views {obj.views}: no NNNNN.png view in it")
        rng = self.rng(index)
        blank = 0
        for k in rng.permutation(len(views.views)):
            view = views.views[k]
            if views.is_blank(view):
                blank += 1
                continue
            image = Image.fromarray(composite(views.rgba(view), self.background))
            height, width = self.image_size
            if image.size != (width, height):
                image = image.resize((width, height), Image.BICUBIC)
            sample.update(image=np.asarray(image), view=view)
            if blank:
                sample["skip_counts"] = {"blank_view": blank}
            return sample
        return {"uid": obj.uid, "skipped": "all_views_blank"}


class Cap3DDataModule(L.LightningDataModule):
    """Cap3D triplets in the release layout (``datamodules.cap3d``).

    Args:
        root: the Cap3D folder (caption CSVs at its top or in ``misc/``).
        subset: "ABO" (``Cap3D_automated_ABO.csv``), "Objaverse" (``Cap3D_automated_Objaverse_full.csv``) or
            None (every one of them found); ``captions``: a caption CSV to use instead.
        point_dir / view_dir: folders (relative to root) of ``<uid>.pt|.ply`` clouds and ``<uid>/`` or
            ``<uid>.zip`` rendered views.
        split_fractions: (train, val) or (train, val, test), summing to 1; split by uid hash (``split_of``). Testing
            needs the three: the test split is never the validation split.
        num_points: points per object (FPS from index 0 when the cloud has more, cached under ``cache_dir``,
            default ``<root's parent>/lang3d_cache``; fewer: an error unless ``allow_repeat``).
        load_images: serve one rendered view per sample; image_size: (H, W); background: grey level behind
            the object (0..255).
        normalize: centre each cloud and scale it into the unit sphere (point encoders, e.g. Point-Bind); False
            (default) serves Cap3D's own units, Point-E's (xyz about ±0.5).
        batch_size / val_batch_size (default batch_size), num_workers, seed: shuffling and view draws;
            drop_last: drop the last incomplete training batch (contrastive losses see full batches).
        max_train_objects / max_val_objects: keep only the first objects of the split (quick runs).
        write_builtin_data: when ``root`` does not exist, ``prepare_data`` writes the built-in synthetic
            Cap3D-format data there (the demos: ``configs/sepe.yaml`` as shipped). Off (default): a missing root is
            an error, never replaced by synthetic data.

    Object files: a caption whose point cloud is missing is skipped, counted in ``skipped["missing_point_cloud"]``
    and reported with a warning (the caption files cover ~1M objects; the clouds are downloaded in parts); when no
    captioned object has a cloud, an error names the caption files and the cloud folder. An object with a cloud but
    no views is an error naming the paths looked for. Batches come from
    ``collate_object_samples``: ``points`` [B,N,3], ``colors`` [B,N,3], ``image`` [B,H,W,3] uint8, lists
    ``caption``, ``uid``, ``view`` and the Counter ``skipped``.
    """

    def __init__(self, root: str, subset: str | None = None, captions: str | None = None,
                 point_dir: str = "Cap3D_pcs_pt", view_dir: str = "Cap3D_Objaverse_renderimgs",
                 split_fractions: tuple[float, ...] = (0.9, 0.1), num_points: int = 8192, allow_repeat: bool = False,
                 load_images: bool = True, image_size: tuple[int, int] = (224, 224), background: int = 255,
                 batch_size: int = 32, val_batch_size: int | None = None, num_workers: int = 4, seed: int = 0,
                 drop_last: bool = True, cache_dir: str | None = None, fps_cache: bool = True,
                 max_train_objects: int | None = None, max_val_objects: int | None = None, normalize: bool = False,
                 write_builtin_data: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.fractions = check_fractions(split_fractions)
        self.datasets: dict[str, Cap3DObjects] = {}
        self.skipped: Counter = Counter()
        self._splits: dict[str, list[Cap3DObject]] | None = None

    @property
    def cache_root(self) -> Path:
        hp = self.hparams
        base = Path(hp.cache_dir).expanduser() if hp.cache_dir else self.root.parent / "lang3d_cache"
        return base / f"cap3d_fps{hp.num_points}"

    def splits(self) -> dict[str, list[Cap3DObject]]:
        """Objects per split ("train", "val" and, with three fractions, "test"), capped; reports missing clouds.
        Built once (reading the caption files and listing the object folders)."""
        if self._splits is not None:
            return self._splits
        hp = self.hparams
        if not self.root.is_dir():
            raise FileNotFoundError(f"Cap3D root {self.root} does not exist")
        captions: dict[str, str] = {}
        caption_paths = caption_files(self.root, hp.subset, hp.captions)
        for path in caption_paths:
            captions.update(read_captions(path))
        objects, missing = index_objects(captions, self.root / hp.point_dir,
                                         self.root / hp.view_dir if hp.load_images else None)
        if not objects:
            raise FileNotFoundError(f"Cap3D: none of the {len(captions)} objects captioned in "
                                    f"{', '.join(map(str, caption_paths))} has a point cloud (<uid>.pt or <uid>.ply) "
                                    f"in {self.root / hp.point_dir} (e.g. {missing[0]})")
        self.skipped = Counter({"missing_point_cloud": len(missing)} if missing else {})
        if missing:
            warnings.warn(f"Cap3D: {len(missing)} of {len(captions)} captioned objects have no point cloud in "
                          f"{self.root / hp.point_dir} (e.g. {missing[0]}); skipped", stacklevel=2)
        out: dict[str, list[Cap3DObject]] = {name: [] for name in SPLITS[:len(self.fractions)]}
        for obj in objects:
            out[SPLITS[split_of(obj.uid, self.fractions)]].append(obj)
        out["train"] = out["train"][:hp.max_train_objects]
        for name in out:
            if name != "train":
                out[name] = out[name][:hp.max_val_objects]
        self._splits = out
        return out

    def _dataset(self, objects: list[Cap3DObject], load_images: bool) -> Cap3DObjects:
        hp = self.hparams
        selector = PointSelector(hp.num_points, hp.allow_repeat, self.cache_root if hp.fps_cache else None)
        return Cap3DObjects(objects, selector, tuple(hp.image_size), hp.background, load_images, hp.seed,
                            hp.normalize)

    def prepare_data(self) -> None:
        """Writes the built-in synthetic data into a missing ``root`` when ``write_builtin_data`` asks for it. With the
        FPS cache on: reads every object's
        cloud once (in ``num_workers`` processes) to fill it; warns about skipped clouds. FPS of 8192 of 16384
        points costs ~0.4 s per object and core, once."""
        if self.hparams.write_builtin_data and not self.root.exists():
            rank_zero_warn(f"Cap3D: {self.root} does not exist; writing the built-in SYNTHETIC Cap3D-format data there "
                           f"(16 objects) because write_builtin_data is true: set it false for real data")
            generate_cap3d(self.root, num_objects=16, views=4, image_size=64)
        if not self.hparams.fps_cache:
            return
        objects = [obj for split in self.splits().values() for obj in split]
        loader = DataLoader(self._dataset(objects, load_images=False), batch_size=16,
                            num_workers=self.hparams.num_workers, collate_fn=collate_object_samples)
        skipped: Counter = Counter()
        for batch in loader:
            skipped.update(batch["skipped"])
        if skipped:
            warnings.warn(f"Cap3D: skipped point clouds {dict(skipped)}", stacklevel=2)

    def setup(self, stage: str) -> None:
        if not self.datasets:
            for name, objects in self.splits().items():
                self.datasets[name] = self._dataset(objects, self.hparams.load_images)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        self.setup("fit")
        dataset = self.datasets["train"]
        return sharded_loader(dataset, self.trainer, hp.batch_size, True, hp.seed, hp.num_workers,
                              collate_object_samples, drop_last=hp.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """The test split (three split fractions; with two there is none, and the validation split is not one)."""
        if len(self.fractions) != 3:
            raise ValueError(f"Cap3D: split_fractions {list(self.fractions)} hold no test split; give three "
                             f"(train, val, test), e.g. [0.9, 0.05, 0.05]")
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        hp = self.hparams
        self.setup("validate")
        return sharded_loader(self.datasets[split], self.trainer, hp.val_batch_size or hp.batch_size, False, hp.seed,
                              hp.num_workers, collate_object_samples)
