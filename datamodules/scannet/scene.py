"""One interface over the two on-disk forms of a ScanNet scan: SensReader-exported frames and the `.sens` file.

Exported layout (SensReader `export_*`): `color/{i}.jpg` (or `{i}.png`), `depth/{i}.png` (uint16 mm),
`pose/{i}.txt` (4x4 camera-to-world), `intrinsic/intrinsic_{color,depth}.txt` (4x4); `i` = raw frame index.
"""

from __future__ import annotations

import abc
import os

import numpy as np
from PIL import Image

from lang3d.data.image_files import decode_resized

from .meta import ScanNetFormatError
from .sens import SensFile

EXPORTED_DIRS = ("color", "depth", "pose", "intrinsic")
EXPORT_DEPTH_SHIFT = 1000.0


def pose_is_valid(pose: np.ndarray) -> bool:
    """True if a [4, 4] pose is finite and its last row is [0, 0, 0, 1] within 1e-4."""
    pose = np.asarray(pose, dtype=np.float64)
    return (pose.shape == (4, 4) and bool(np.isfinite(pose).all())
            and bool(np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0], rtol=0.0, atol=1e-4)))


def _read_matrix(path: str) -> np.ndarray:
    """[4, 4] float64 matrix from a whitespace-separated text file (non-finite values kept as read)."""
    if not os.path.isfile(path):
        raise ScanNetFormatError(f"{path}: file not found")
    try:
        mat = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ScanNetFormatError(f"{path}: cannot parse a 4x4 matrix: {e}") from e
    if mat.shape != (4, 4):
        raise ScanNetFormatError(f"{path}: expected a 4x4 matrix, got shape {mat.shape}")
    return mat


class Scene(abc.ABC):
    """A ScanNet scan as a sequence of RGB-D frames.

    Attributes: `name` (scan id), `frame_ids` (list[int], ascending), `intrinsic_color` / `intrinsic_depth`
    ([4, 4] float64 pinhole matrices, pixels).
    """

    name: str
    frame_ids: list[int]
    intrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray

    @abc.abstractmethod
    def pose(self, i: int) -> np.ndarray:
        """[4, 4] float64 camera-to-world pose (OpenCV camera axes) of frame id i, as stored (may be NaN/inf)."""

    @abc.abstractmethod
    def source_files(self, i: int) -> list[str]:
        """Paths of the files frame id i is read from (what a cache of it must be no older than)."""

    @abc.abstractmethod
    def color(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB image of frame id i."""

    @abc.abstractmethod
    def color_resized(self, i: int, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        """(colour of frame id i resized to size = (W, H): [H, W, 3] uint8, the stored frame's (width, height)),
        decoded at reduced scale where the format allows (``lang3d.data.image_files.decode_resized``)."""

    @abc.abstractmethod
    def depth(self, i: int) -> np.ndarray:
        """[h, w] float32 depth of frame id i in metres (0 = invalid)."""

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, frames={len(self.frame_ids)})"


class ExportedScene(Scene):
    """Frames exported by ScanNet's SensReader into `scene_dir/{color,depth,pose,intrinsic}/`.

    Frame ids are the integer stems of `pose/*.txt`; each must have `color/{i}.jpg|png` and `depth/{i}.png`.
    """

    def __init__(self, scene_dir: str | os.PathLike):
        self.scene_dir = os.path.abspath(os.fspath(scene_dir))
        self.name = os.path.basename(self.scene_dir)
        for sub in EXPORTED_DIRS:
            if not os.path.isdir(os.path.join(self.scene_dir, sub)):
                raise ScanNetFormatError(f"{os.path.join(self.scene_dir, sub)}: folder of exported frames not found")
        self.intrinsic_color = _read_matrix(os.path.join(self.scene_dir, "intrinsic", "intrinsic_color.txt"))
        self.intrinsic_depth = _read_matrix(os.path.join(self.scene_dir, "intrinsic", "intrinsic_depth.txt"))
        pose_dir = os.path.join(self.scene_dir, "pose")
        ids = []
        for fname in os.listdir(pose_dir):
            stem, ext = os.path.splitext(fname)
            if ext != ".txt":
                continue
            if not stem.isdigit():
                raise ScanNetFormatError(f"{os.path.join(pose_dir, fname)}: pose files must be named "
                                         f"<frame index>.txt")
            ids.append(int(stem))
        if not ids:
            raise ScanNetFormatError(f"{pose_dir}: no pose files <frame index>.txt")
        self.frame_ids = sorted(ids)
        self._color_paths: dict[int, str] = {}
        missing = []
        for i in self.frame_ids:
            jpg, png = (os.path.join(self.scene_dir, "color", f"{i}{ext}") for ext in (".jpg", ".png"))
            color = jpg if os.path.isfile(jpg) else png if os.path.isfile(png) else None
            if color is None:
                missing.append(jpg)
            else:
                self._color_paths[i] = color
            if not os.path.isfile(self._depth_path(i)):
                missing.append(self._depth_path(i))
        if missing:
            raise ScanNetFormatError(f"{self.scene_dir}: {len(missing)} frame file(s) missing for the poses in "
                                     f"{pose_dir}, first: {missing[0]}")

    def _depth_path(self, i: int) -> str:
        return os.path.join(self.scene_dir, "depth", f"{i}.png")

    def _check_id(self, i: int) -> int:
        if i not in self._color_paths:
            raise KeyError(f"{self.scene_dir}: no frame with id {i}")
        return i

    def pose(self, i: int) -> np.ndarray:
        return _read_matrix(os.path.join(self.scene_dir, "pose", f"{self._check_id(i)}.txt"))

    def source_files(self, i: int) -> list[str]:
        intrinsic = [os.path.join(self.scene_dir, "intrinsic", f"intrinsic_{cam}.txt") for cam in ("color", "depth")]
        return [self._color_paths[self._check_id(i)], self._depth_path(i),
                os.path.join(self.scene_dir, "pose", f"{i}.txt"), *intrinsic]

    def color(self, i: int) -> np.ndarray:
        path = self._color_paths[self._check_id(i)]
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise ScanNetFormatError(f"{path}: cannot decode colour image: {e}") from e

    def color_resized(self, i: int, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        path = self._color_paths[self._check_id(i)]
        try:
            return decode_resized(path, size)
        except (OSError, ValueError, SyntaxError) as e:
            raise ScanNetFormatError(f"{path}: cannot decode colour image: {e}") from e

    def depth(self, i: int) -> np.ndarray:
        path = self._depth_path(self._check_id(i))
        try:
            with Image.open(path) as im:
                mode = im.mode
                raw = np.asarray(im)
        except (OSError, ValueError, SyntaxError) as e:
            raise ScanNetFormatError(f"{path}: cannot decode depth image: {e}") from e
        if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
            raise ScanNetFormatError(f"{path}: depth must be a 16-bit single-channel PNG, got Pillow mode {mode}")
        return (raw.astype(np.float32) / np.float32(EXPORT_DEPTH_SHIFT)).astype(np.float32)


class SensScene(Scene):
    """A scan read straight from its `.sens` file; frame ids are 0..num_frames-1."""

    def __init__(self, sens_path: str | os.PathLike):
        self.sens = SensFile(sens_path)
        self.name = os.path.splitext(os.path.basename(self.sens.path))[0]
        self.frame_ids = list(range(self.sens.num_frames))
        self.intrinsic_color = self.sens.intrinsic_color
        self.intrinsic_depth = self.sens.intrinsic_depth

    def pose(self, i: int) -> np.ndarray:
        return self.sens.pose(i)

    def source_files(self, i: int) -> list[str]:
        return [self.sens.path]

    def color(self, i: int) -> np.ndarray:
        return self.sens.color(i)

    def color_resized(self, i: int, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        return self.sens.color_resized(i, size), self.sens.color_size

    def depth(self, i: int) -> np.ndarray:
        return self.sens.depth(i)


def open_scene(scene_dir: str | os.PathLike, source: str = "auto") -> Scene:
    """Open a scan folder `.../<name>/` as exported frames or as `<name>/<name>.sens`.

    source: "exported", "sens", or "auto" (exported frames when all of color/ depth/ pose/ intrinsic/ exist,
    else the .sens file).
    """
    scene_dir = os.path.abspath(os.fspath(scene_dir))
    sens_path = os.path.join(scene_dir, os.path.basename(scene_dir) + ".sens")
    if source == "exported":
        return ExportedScene(scene_dir)
    if source == "sens":
        if not os.path.isfile(sens_path):
            raise ScanNetFormatError(f"{sens_path}: .sens file not found")
        return SensScene(sens_path)
    if source != "auto":
        raise ValueError(f"source must be 'auto', 'exported' or 'sens', got {source!r}")
    if all(os.path.isdir(os.path.join(scene_dir, sub)) for sub in EXPORTED_DIRS):
        return ExportedScene(scene_dir)
    if os.path.isfile(sens_path):
        return SensScene(sens_path)
    raise ScanNetFormatError(f"{scene_dir}: no ScanNet frames found: expected exported "
                             f"{'/ '.join(EXPORTED_DIRS)}/ folders or {os.path.basename(sens_path)}")
