"""Reader and writer of ScanNet's `.sens` RGB-D stream, version 4 (little-endian).

Layout (ScanNet SensReader `SensorData.py` / `sensorData.h`):
    uint32 version=4 | uint64 n + char[n] sensor_name
    float32[16] intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth (row-major 4x4)
    int32 color_compression (0 raw, 1 png, 2 jpeg) | int32 depth_compression (0 raw_ushort, 1 zlib_ushort)
    uint32 color_width, color_height, depth_width, depth_height | float32 depth_shift | uint64 num_frames
    per frame: float32[16] camera_to_world | uint64 t_color, t_depth, color_bytes, depth_bytes | payloads
    uint64 num_imu_frames (+ IMU records, not read)
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from lang3d.data.image_files import decode_resized

from .meta import ScanNetFormatError

SENS_VERSION = 4
COLOR_COMPRESSION = {0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {0: "raw_ushort", 1: "zlib_ushort"}
_MATS = struct.Struct("<64f")
_TAIL = struct.Struct("<ii4IfQ")
_FRAME = struct.Struct("<16f4Q")


class SensFormatError(ScanNetFormatError):
    """A `.sens` file is truncated, has an unsupported version/compression, or a frame fails to decode."""


class SensFile:
    """Random access to the frames of one `.sens` file.

    The header and a per-frame byte-offset index are read on construction (payloads are skipped, not
    loaded). Frames are read with positional reads on one lazily opened handle, reopened in a new process
    (after fork in DataLoader workers) and dropped when pickled.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fh = None
        self._fh_pid = -1
        try:
            file_size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                self._read_header(f, file_size)
                self._build_index(f, file_size)
        except FileNotFoundError:
            raise SensFormatError(f"{self.path}: .sens file not found") from None

    # ----------------------------------------------------------------------------------------- parsing
    def _read_exact(self, f, n: int, what: str, file_size: int) -> bytes:
        start = f.tell()
        data = f.read(n)
        if len(data) != n:
            raise SensFormatError(f"{self.path} is truncated: {what} needs bytes {start}–{start + n}, "
                                  f"file has {file_size} bytes")
        return data

    def _read_header(self, f, file_size: int) -> None:
        (version,) = struct.unpack("<I", self._read_exact(f, 4, "header", file_size))
        if version != SENS_VERSION:
            raise SensFormatError(f"{self.path}: unsupported .sens version {version}, expected {SENS_VERSION}")
        (name_len,) = struct.unpack("<Q", self._read_exact(f, 8, "header", file_size))
        if name_len > 4096:
            raise SensFormatError(f"{self.path}: implausible sensor-name length {name_len}; not a .sens file?")
        self.sensor_name = self._read_exact(f, name_len, "header", file_size).decode("utf-8", "replace")
        mats = np.array(_MATS.unpack(self._read_exact(f, _MATS.size, "header", file_size)), dtype=np.float64)
        self.intrinsic_color, self.extrinsic_color, self.intrinsic_depth, self.extrinsic_depth = mats.reshape(4, 4, 4)
        c_comp, d_comp, cw, ch, dw, dh, shift, n = _TAIL.unpack(self._read_exact(f, _TAIL.size, "header", file_size))
        if c_comp not in COLOR_COMPRESSION:
            raise SensFormatError(f"{self.path}: unsupported colour compression type {c_comp}, "
                                  f"expected one of {COLOR_COMPRESSION}")
        if d_comp not in DEPTH_COMPRESSION:
            raise SensFormatError(f"{self.path}: unsupported depth compression type {d_comp}, "
                                  f"expected one of {DEPTH_COMPRESSION}")
        if min(cw, ch, dw, dh) == 0 or not np.isfinite(shift) or shift <= 0:
            raise SensFormatError(f"{self.path}: bad header: colour {cw}x{ch}, depth {dw}x{dh}, "
                                  f"depth_shift {shift}")
        self.color_compression = COLOR_COMPRESSION[c_comp]
        self.depth_compression = DEPTH_COMPRESSION[d_comp]
        self.color_size = (cw, ch)
        self.depth_size = (dw, dh)
        self.depth_shift = float(shift)
        self._num_frames = n

    def _build_index(self, f, file_size: int) -> None:
        n = self._num_frames
        if f.tell() + n * _FRAME.size > file_size:
            raise SensFormatError(f"{self.path} is truncated: header claims {n} frames, which need at least "
                                  f"{f.tell() + n * _FRAME.size} bytes, file has {file_size} bytes")
        self._poses = np.empty((n, 4, 4), dtype=np.float32)
        self._offsets = []
        for i in range(n):
            start = f.tell()
            fields = _FRAME.unpack(self._read_exact(f, _FRAME.size, f"frame {i} of {n}", file_size))
            color_off, color_len, depth_len = start + _FRAME.size, fields[18], fields[19]
            end = color_off + color_len + depth_len
            if end > file_size:
                raise SensFormatError(f"{self.path} is truncated: frame {i} of {n} needs bytes {start}–{end}, "
                                      f"file has {file_size} bytes")
            self._poses[i] = np.array(fields[:16], dtype=np.float32).reshape(4, 4)
            self._offsets.append((color_off, color_len, color_off + color_len, depth_len))
            f.seek(end)

    # ----------------------------------------------------------------------------------------- access
    @property
    def num_frames(self) -> int:
        return self._num_frames

    def __len__(self) -> int:
        return self._num_frames

    def _check_index(self, i: int) -> int:
        if not 0 <= i < self._num_frames:
            raise IndexError(f"{self.path}: frame {i} out of range (file has {self._num_frames} frames)")
        return int(i)

    def _pread(self, offset: int, size: int, i: int) -> bytes:
        if self._fh is None or self._fh_pid != os.getpid():
            self._fh = open(self.path, "rb", buffering=0)
            self._fh_pid = os.getpid()
        data = os.pread(self._fh.fileno(), size, offset)
        if len(data) != size:
            raise SensFormatError(f"{self.path} is truncated: frame {i} needs bytes {offset}–{offset + size}, "
                                  f"read {len(data)} of them (file changed after opening?)")
        return data

    def pose(self, i: int) -> np.ndarray:
        """[4, 4] float64 camera-to-world pose of frame i (may be non-finite in real scans)."""
        return self._poses[self._check_index(i)].astype(np.float64)

    def color_bytes(self, i: int) -> bytes:
        """Compressed colour payload of frame i, as stored (JPEG/PNG/raw bytes)."""
        i = self._check_index(i)
        off, size, _, _ = self._offsets[i]
        return self._pread(off, size, i)

    def color(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB image of frame i."""
        data = self.color_bytes(i)
        w, h = self.color_size
        if self.color_compression == "raw":
            if len(data) != w * h * 3:
                raise SensFormatError(f"{self.path}: frame {i}: raw colour has {len(data)} bytes, "
                                      f"expected {w}x{h}x3")
            return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3).copy()
        try:
            with Image.open(io.BytesIO(data)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise SensFormatError(f"{self.path}: frame {i}: cannot decode {self.color_compression} "
                                  f"colour image: {e}") from e
        if rgb.shape != (h, w, 3):
            raise SensFormatError(f"{self.path}: frame {i}: colour image is {rgb.shape[1]}x{rgb.shape[0]}, "
                                  f"header says {w}x{h}")
        return rgb

    def color_resized(self, i: int, size: tuple[int, int]) -> np.ndarray:
        """[H, W, 3] uint8 RGB image of frame i resized to size = (W, H) (Pillow bilinear), a JPEG decoded at
        reduced scale (``lang3d.data.image_files.decode_resized``)."""
        if self.color_compression == "raw":
            return np.asarray(Image.fromarray(self.color(i)).resize(size, Image.BILINEAR))
        try:
            rgb, stored = decode_resized(self.color_bytes(i), size)
        except (OSError, ValueError, SyntaxError) as e:
            raise SensFormatError(f"{self.path}: frame {i}: cannot decode {self.color_compression} "
                                  f"colour image: {e}") from e
        if stored != self.color_size:
            raise SensFormatError(f"{self.path}: frame {i}: colour image is {stored[0]}x{stored[1]}, "
                                  f"header says {self.color_size[0]}x{self.color_size[1]}")
        return rgb

    def depth_mm(self, i: int) -> np.ndarray:
        """[h, w] uint16 raw depth of frame i (units of 1/depth_shift metres; 0 = invalid)."""
        i = self._check_index(i)
        _, _, off, size = self._offsets[i]
        data = self._pread(off, size, i)
        if self.depth_compression == "zlib_ushort":
            try:
                data = zlib.decompress(data)
            except zlib.error as e:
                raise SensFormatError(f"{self.path}: frame {i}: cannot decompress depth: {e}") from e
        w, h = self.depth_size
        if len(data) != w * h * 2:
            raise SensFormatError(f"{self.path}: frame {i}: depth has {len(data)} bytes, expected {w}x{h}x2")
        return np.frombuffer(data, dtype="<u2").reshape(h, w).astype(np.uint16)

    def depth(self, i: int) -> np.ndarray:
        """[h, w] float32 depth of frame i in metres (0 = invalid)."""
        return (self.depth_mm(i).astype(np.float32) / np.float32(self.depth_shift)).astype(np.float32)

    # ----------------------------------------------------------------------------------------- handle
    def close(self) -> None:
        if self._fh is not None and self._fh_pid == os.getpid():
            self._fh.close()
        self._fh = None

    def __enter__(self) -> "SensFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"], state["_fh_pid"] = None, -1
        return state

    def __repr__(self) -> str:
        return (f"SensFile({self.path!r}, frames={self._num_frames}, color={self.color_size}, "
                f"depth={self.depth_size})")


def _encode_color(color, jpeg_quality: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes and (width, height) of one colour frame given as [H, W, 3] uint8 or JPEG bytes."""
    if isinstance(color, (bytes, bytearray)):
        with Image.open(io.BytesIO(color)) as im:
            if im.format != "JPEG":
                raise ValueError(f"colour bytes must be JPEG, got {im.format}")
            return bytes(color), im.size
    arr = np.asarray(color)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"colour frames must be [H, W, 3] uint8, got {arr.shape} {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue(), (arr.shape[1], arr.shape[0])


def write_sens(path: str | os.PathLike, intrinsic_color: np.ndarray, intrinsic_depth: np.ndarray,
               colors: Sequence, depths_mm_uint16: Sequence[np.ndarray], poses: np.ndarray,
               jpeg_quality: int = 95, sensor_name: str = "lang3d-synthetic") -> str:
    """Write a version-4 `.sens` file (JPEG colour, zlib uint16 depth, depth_shift 1000, no IMU records).

    colors: N frames, each [H, W, 3] uint8 or already-encoded JPEG bytes (stored unchanged).
    depths_mm_uint16: N frames [h, w] uint16 millimetres (0 = invalid). poses: [N, 4, 4] camera-to-world.
    Intrinsics: [4, 4]; all matrices are stored as float32. Written to `path + ".partial"`, then renamed.
    """
    path = os.fspath(path)
    poses = np.asarray(poses, dtype=np.float32)
    n = len(poses)
    if poses.shape != (n, 4, 4) or len(colors) != n or len(depths_mm_uint16) != n or n == 0:
        raise ValueError(f"need N>0 poses [N,4,4] with N colours and N depths, got poses {poses.shape}, "
                         f"{len(colors)} colours, {len(depths_mm_uint16)} depths")
    k_color = np.asarray(intrinsic_color, dtype=np.float32)
    k_depth = np.asarray(intrinsic_depth, dtype=np.float32)
    if k_color.shape != (4, 4) or k_depth.shape != (4, 4):
        raise ValueError(f"intrinsics must be [4, 4], got {k_color.shape} and {k_depth.shape}")
    d_shape = np.asarray(depths_mm_uint16[0]).shape
    if len(d_shape) != 2:
        raise ValueError(f"depth frames must be [h, w] uint16, got shape {d_shape}")
    first_jpeg, c_size = _encode_color(colors[0], jpeg_quality)
    name = sensor_name.encode("utf-8")
    eye = np.eye(4, dtype=np.float32).ravel()
    tmp = path + ".partial"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<IQ", SENS_VERSION, len(name)) + name)
            f.write(_MATS.pack(*k_color.ravel(), *eye, *k_depth.ravel(), *eye))
            f.write(_TAIL.pack(2, 1, c_size[0], c_size[1], d_shape[1], d_shape[0], 1000.0, n))
            for i in range(n):
                jpeg, size = (first_jpeg, c_size) if i == 0 else _encode_color(colors[i], jpeg_quality)
                depth = np.asarray(depths_mm_uint16[i])
                if size != c_size or depth.shape != d_shape or depth.dtype != np.uint16:
                    raise ValueError(f"frame {i}: colour {size} / depth {depth.shape} {depth.dtype} differ from "
                                     f"frame 0: colour {c_size} / depth {d_shape} uint16")
                zdepth = zlib.compress(depth.astype("<u2").tobytes())
                t = i * 33333  # microseconds at 30 Hz
                f.write(_FRAME.pack(*poses[i].ravel(), t, t, len(jpeg), len(zdepth)))
                f.write(jpeg)
                f.write(zdepth)
            f.write(struct.pack("<Q", 0))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
