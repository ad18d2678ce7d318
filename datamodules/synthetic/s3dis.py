"""Synthetic S3DIS rooms in the raw ``Stanford3dDataset_v1.2_Aligned_Version`` layout.

A room is a box [0,Lx] x [0,Ly] x [0,H] metres (z up): floor, ceiling, four walls (a door and a window cut into
them), a beam under the ceiling, a column in a corner, a board and a bookcase against walls, a table with
chairs, a sofa and clutter boxes. Points are drawn uniformly on the objects' surfaces (about
``points_per_room`` in all, 3 mm noise) with a class colour x per-instance tint + per-point noise, so that the
class is learnable from geometry and colour. Lines are ``%.3f %.3f %.3f %d %d %d`` like the real files; the
first room of the first area also has a ``stairs`` step (read as clutter). With ``malformed_line`` one line
of the ceiling of the last room gets the real release's defect: a NUL byte in place of the space between the
red and green values.

    python -m datamodules.synthetic.s3dis --out DIR --areas 1 5 --rooms-per-area 2
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datamodules.s3dis.raw import ALIGNED_DIR

CLASS_RGB = {"ceiling": (200, 200, 190), "floor": (120, 90, 60), "wall": (180, 170, 150), "beam": (230, 120, 40),
             "column": (90, 150, 200), "window": (100, 200, 230), "door": (150, 60, 40), "table": (60, 160, 60),
             "chair": (200, 40, 60), "sofa": (120, 40, 160), "bookcase": (70, 50, 30), "board": (245, 245, 245),
             "clutter": (60, 60, 70), "stairs": (140, 140, 90)}
ROOM_TYPES = ("office", "conferenceRoom", "hallway", "storage", "pantry", "WC", "lounge", "copyRoom")


def _rect(origin, u, v) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(origin, float), np.asarray(u, float), np.asarray(v, float)


def _box_faces(lo, hi, skip_bottom: bool = True) -> list:
    """The faces of an axis-aligned box as rectangles (bottom face left out by default: it rests on something)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    dx, dy, dz = np.diag(hi - lo)
    faces = [_rect(hi * [0, 0, 1] + lo * [1, 1, 0], dx, dy),                                     # top
             _rect(lo, dx, dz), _rect(lo + dy, dx, dz), _rect(lo, dy, dz), _rect(lo + dx, dy, dz)]  # sides
    return faces if skip_bottom else faces + [_rect(lo, dx, dy)]


def _area(rect) -> float:
    return float(np.linalg.norm(np.cross(rect[1], rect[2])))


def _objects(rng: np.random.Generator, lx: float, ly: float, h: float, stairs: bool) -> list[tuple[str, list, list]]:
    """(class, rectangles, holes) per object; holes are (rectangle index, (a0, a1, b0, b1)) cut-outs in the
    rectangle's (u, v) fractions."""
    door_w, door_h = 0.9, 2.1
    door_a = rng.uniform(0.2, 0.6)
    win_a, win_b = rng.uniform(0.2, 0.5), 0.9 / h
    win_w, win_h = 1.2 / lx, 1.0 / h
    objs = [("floor", [_rect([0, 0, 0], [lx, 0, 0], [0, ly, 0])], []),
            ("ceiling", [_rect([0, 0, h], [lx, 0, 0], [0, ly, 0])], []),
            ("wall", [_rect([0, 0, 0], [lx, 0, 0], [0, 0, h])], [(door_a, door_a + door_w / lx, 0, door_h / h)]),
            ("wall", [_rect([0, ly, 0], [lx, 0, 0], [0, 0, h])], [(win_a, win_a + win_w, win_b, win_b + win_h)]),
            ("wall", [_rect([0, 0, 0], [0, ly, 0], [0, 0, h])], []),
            ("wall", [_rect([lx, 0, 0], [0, ly, 0], [0, 0, h])], []),
            ("door", [_rect([door_a * lx, 0.03, 0], [door_w, 0, 0], [0, 0, door_h])], []),
            ("window", [_rect([win_a * lx, ly - 0.02, win_b * h], [win_w * lx, 0, 0], [0, 0, win_h * h])], []),
            ("beam", _box_faces([0, ly * 0.5 - 0.15, h - 0.4], [lx, ly * 0.5 + 0.15, h]), []),
            ("column", _box_faces([lx - 0.4, ly - 0.4, 0], [lx, ly, h]), []),
            ("board", [_rect([0.02, ly * 0.3, 0.9], [0, min(2.0, ly * 0.4), 0], [0, 0, 1.1])], [])]
    bx = rng.uniform(0.8, 1.6)
    bookcase = _box_faces([lx * 0.35, ly - 0.45, 0], [lx * 0.35 + bx, ly - 0.05, 1.9])
    bookcase += [_rect([lx * 0.35, ly - 0.45, z], [bx, 0, 0], [0, 0.4, 0]) for z in (0.45, 0.9, 1.35)]  # shelves
    objs.append(("bookcase", bookcase, []))
    tx, ty = lx * 0.5 + rng.uniform(-0.3, 0.3), ly * 0.3 + rng.uniform(-0.2, 0.2)
    table = _box_faces([tx - 0.7, ty - 0.4, 0.70], [tx + 0.7, ty + 0.4, 0.75], skip_bottom=False)
    for sx in (-0.65, 0.6):
        for sy in (-0.35, 0.3):
            table += _box_faces([tx + sx, ty + sy, 0], [tx + sx + 0.05, ty + sy + 0.05, 0.70])
    objs.append(("table", table, []))
    for cx in rng.choice([-0.5, 0.0, 0.5], size=2, replace=False):
        cy = ty + 0.75
        chair = _box_faces([tx + cx - 0.22, cy - 0.22, 0.42], [tx + cx + 0.22, cy + 0.22, 0.47], skip_bottom=False)
        chair += _box_faces([tx + cx - 0.22, cy + 0.18, 0.47], [tx + cx + 0.22, cy + 0.22, 0.95])
        chair += [_rect([tx + cx - 0.2, cy - 0.2, 0], [0, 0, 0.42], [0.03, 0, 0]),
                  _rect([tx + cx + 0.17, cy - 0.2, 0], [0, 0, 0.42], [0.03, 0, 0])]
        objs.append(("chair", chair, []))
    sofa = _box_faces([lx - 1.0, ly * 0.15, 0], [lx - 0.1, ly * 0.15 + 1.8, 0.45])
    sofa += _box_faces([lx - 0.3, ly * 0.15, 0.45], [lx - 0.1, ly * 0.15 + 1.8, 0.85])
    objs.append(("sofa", sofa, []))
    for _ in range(2):
        s = rng.uniform(0.15, 0.35, size=3)
        x0 = [rng.uniform(0.3, lx - 1.5), rng.uniform(ly * 0.55, ly - 1.0), 0]
        objs.append(("clutter", _box_faces(x0, np.add(x0, s)), []))
    objs.append(("clutter", _box_faces([tx - 0.3, ty - 0.1, 0.75], [tx - 0.05, ty + 0.1, 0.9]), []))  # on table
    if stairs:
        objs.append(("stairs", _box_faces([0.3, ly * 0.6, 0], [1.1, ly * 0.6 + 0.3, 0.18]), []))
    return objs


def _sample(rng: np.random.Generator, rects: list, holes: list, count: int) -> np.ndarray:
    """``count`` points [count,3] uniform over the rectangles (area-weighted), outside the hole fractions."""
    areas = np.array([_area(r) for r in rects])
    which = rng.choice(len(rects), size=count, p=areas / areas.sum())
    ab = rng.random((count, 2))
    keep = np.ones(count, bool)
    for a0, a1, b0, b1 in holes:
        keep &= ~((ab[:, 0] >= a0) & (ab[:, 0] <= a1) & (ab[:, 1] >= b0) & (ab[:, 1] <= b1))
    origin = np.stack([r[0] for r in rects])[which]
    u, v = np.stack([r[1] for r in rects])[which], np.stack([r[2] for r in rects])[which]
    points = origin + ab[:, :1] * u + ab[:, 1:] * v
    return points[keep] + rng.normal(0, 0.003, size=(int(keep.sum()), 3))


def make_room(rng: np.random.Generator, num_points: int, stairs: bool = False,
              size: tuple[float, float] | None = None) -> list[tuple[str, np.ndarray]]:
    """Annotation files of one room: [(class, lines [n,6] float64 x y z r g b)], in generation order. ``size``:
    the floor's (Lx, Ly) in metres (at least 2.5 m each); None: both uniform in 4-7 m."""
    lx, ly, h = rng.uniform(4.0, 7.0), rng.uniform(4.0, 7.0), rng.uniform(2.7, 3.2)
    if size is not None:
        if min(size) < 2.5:
            raise ValueError(f"room size {tuple(size)} m: each side must be at least 2.5 m (the furniture's room)")
        lx, ly = (float(v) for v in size)
    objs = _objects(rng, lx, ly, h, stairs)
    areas = np.array([sum(_area(r) for r in rects) for _, rects, _ in objs])
    density = num_points / areas.sum()
    files = []
    for (cls, rects, holes), area in zip(objs, areas):
        points = _sample(rng, rects, holes, max(30, int(round(area * density))))
        tint = rng.uniform(0.85, 1.15, size=3)
        color = np.clip(np.asarray(CLASS_RGB[cls]) * tint + rng.normal(0, 8, size=points.shape), 0, 255)
        files.append((cls, np.concatenate([points, np.round(color)], 1)))
    return files


def _format(lines: np.ndarray) -> bytes:
    return "".join("%.3f %.3f %.3f %d %d %d\n" % tuple(row) for row in lines.tolist()).encode()


def generate_s3dis(root: str | Path, areas=(1, 5), rooms_per_area: int = 2, points_per_room: int = 20000,
                   seed: int = 0, malformed_line: bool = True,
                   room_sizes: list[tuple[float, float]] | None = None) -> dict:
    """Write ``root/Stanford3dDataset_v1.2_Aligned_Version/Area_N/<room>/{<room>.txt, Annotations/<cls>_<k>.txt}``.

    ``room_sizes``: the floor (Lx, Ly) in metres of each room of an area, in order (e.g. a 40 x 2.5 m hallway,
    as large as real S3DIS rooms get); None: random 4-7 m sides. ``points_per_room`` is spread over the room's
    surfaces, so a larger room needs more points for the same density.

    Returns {"rooms": ["Area_1/office_1", ...], "malformed": None or (file path, 1-based line number,
    (r, g, b) the line's true colour)}.
    """
    if room_sizes is not None and len(room_sizes) != rooms_per_area:
        raise ValueError(f"room_sizes gives {len(room_sizes)} sizes for {rooms_per_area} rooms per area")
    rng = np.random.default_rng(seed)
    base = Path(root) / ALIGNED_DIR
    rooms, malformed = [], None
    for a_i, area in enumerate(areas):
        counts: dict[str, int] = {}
        for r in range(rooms_per_area):
            kind = ROOM_TYPES[r % len(ROOM_TYPES)]
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{kind}_{counts[kind]}"
            room_dir = base / f"Area_{area}" / name
            (room_dir / "Annotations").mkdir(parents=True, exist_ok=True)
            per_class: dict[str, int] = {}
            chunks = {}
            last_room = a_i == len(areas) - 1 and r == rooms_per_area - 1
            size = None if room_sizes is None else room_sizes[r]
            for cls, lines in make_room(rng, points_per_room, stairs=a_i == 0 and r == 0, size=size):
                per_class[cls] = per_class.get(cls, 0) + 1
                file = room_dir / "Annotations" / f"{cls}_{per_class[cls]}.txt"
                text = _format(lines)
                if malformed_line and last_room and file.name == "ceiling_1.txt":
                    line_no = len(lines) // 2 + 1
                    text = _glue_colour(text, line_no)
                    malformed = (file, line_no, tuple(int(c) for c in lines[line_no - 1, 3:]))
                file.write_bytes(text)
                chunks[file.name] = text
            (room_dir / f"{name}.txt").write_bytes(b"".join(chunks[k] for k in sorted(chunks)))
            rooms.append(f"Area_{area}/{name}")
    return {"rooms": rooms, "malformed": malformed}


def _glue_colour(text: bytes, line_no: int) -> bytes:
    """Replace the space between red and green on line ``line_no`` (1-based) with a NUL byte."""
    lines = text.split(b"\n")
    fields = lines[line_no - 1].split(b" ")
    lines[line_no - 1] = b" ".join(fields[:3] + [fields[3] + b"\x00" + fields[4]] + fields[5:])
    return b"\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output root (the Stanford3dDataset_... folder goes inside)")
    parser.add_argument("--areas", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--rooms-per-area", type=int, default=2)
    parser.add_argument("--points-per-room", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-malformed-line", action="store_true", help="leave out the NUL-glued line")
    parser.add_argument("--room-size", type=float, nargs=2, action="append", metavar=("LX", "LY"),
                        help="floor size in metres of the next room of each area (once per room; default random)")
    args = parser.parse_args(argv)
    info = generate_s3dis(args.out, args.areas, args.rooms_per_area, args.points_per_room, args.seed,
                          not args.no_malformed_line, args.room_size)
    print(f"wrote {len(info['rooms'])} rooms under {Path(args.out) / ALIGNED_DIR}")


if __name__ == "__main__":
    main()
