"""Makes the golden fixture of ``tests/test_instance_metrics.py``: random scenes scored by the official ScanNet
instance benchmark script.

Official code: github.com/ScanNet/ScanNet, commit 3830fce7f8b2e48ef047ef7fd76ea5f62903f51c,
``BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py`` with ``BenchmarkScripts/util_3d.py`` and
``BenchmarkScripts/util.py``. The three files are read from a clone (``--scannet-git``, a git directory) and
run unchanged in their logic; ``PORT`` lists the only edits, all mechanical: Python 2 -> 3 syntax (print, except),
NumPy names removed since (``np.float``, ``np.bool``, ``np.in1d``), and the image / PLY imports that evaluation
does not use. Prediction order is the order of the lines of each scene's prediction file (dict order in Python 3,
as in the Python 3 ports PointGroup, mmdet3d and Pointcept use).

Each case is a few scenes of ~2,000 vertices in the benchmark's own text formats: ground truth one id per vertex
(``label_id * 1000 + k``, 0 = unannotated; wall 1 and floor 2 are not evaluated, i.e. void), predictions
``pred_mask/<scene>_<i>.txt <label_id> <score>``. The scenes hold small instances (< 100 vertices, the benchmark's
minimum region size), noisy and duplicate predictions, merges of two instances, predictions mostly on void or on
small instances (excused at some thresholds), predictions under 100 vertices, wrong classes and tied scores.

The last case has a class (label id 7, "table") whose every prediction lies on void vertices: the official script
raises IndexError there. It is scored twice: as is (the error is recorded) and without that class's predictions
(then the script gives that class AP 0, the value the project returns for the full case).

Outputs (``--out``): ``cases.npz`` (per case c, scene s: ``c{c}_s{s}_gt_ids`` int64 [V], ``_pred_masks`` packed
bits [I, ceil(V/8)] of [I, V] bool, ``_pred_label_ids`` int64 [I], ``_pred_scores`` float64 [I], ``_num_verts``) and
``expected.json`` (per case: the official AP per class [18] x overlap [10, in the script's order 0.50..0.90, 0.25],
NaN written as null, and its averages).

    python tests/data/scannet_instance_eval/make_fixture.py --scannet-git /path/to/ScanNet/.git \\
        --out tests/data/scannet_instance_eval
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

COMMIT = "3830fce7f8b2e48ef047ef7fd76ea5f62903f51c"
FILES = ("BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py", "BenchmarkScripts/util_3d.py",
         "BenchmarkScripts/util.py")
PORT = [  # (regular expression, replacement): Python 3 syntax and current NumPy, nothing else
    (r"(?m)^(\s*)print (.+)$", r"\1print(\2)"),
    (r"except Exception, e:", "except Exception as e:"),
    (r"np\.float\b(?!\d)", "np.float64"),
    (r"np\.bool\b(?!_)", "np.bool_"),
    (r"np\.in1d\(", "np.isin("),
    (r"(?m)^    import imageio$", "    pass"),
    (r"(?m)^    from plyfile import PlyData, PlyElement$", "    pass"),
]
VALID_CLASS_IDS = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]
USED_IDS = [3, 4, 5, 6]            # classes of the random scenes
EXCUSED_ID = 7                     # the class of the last case whose predictions are all on void vertices
VOID_IDS = [1, 2]                  # wall, floor: annotated instances of classes the benchmark does not evaluate


def load_official(scannet_git: Path, workdir: Path, data_dir: Path):
    """The ported official module, imported with its command line pointing at ``data_dir``."""
    for path in FILES:
        text = subprocess.run(["git", "--git-dir", str(scannet_git), "show", f"{COMMIT}:{path}"], check=True,
                              capture_output=True, text=True).stdout
        for pattern, replacement in PORT:
            text = re.sub(pattern, replacement, text)
        (workdir / Path(path).name).write_text(text)
    sys.path.insert(0, str(workdir))
    sys.argv = ["evaluate_semantic_instance.py", "--pred_path", str(data_dir), "--gt_path", str(data_dir)]
    return importlib.import_module("evaluate_semantic_instance")


def make_scene(rng: np.random.Generator, num_verts: int, class_ids: list[int], excused: bool):
    """-> gt ids [V] int64, predictions [(mask [V] bool, label id, score)] in file order."""
    order = rng.permutation(num_verts)
    gt = np.zeros(num_verts, np.int64)
    start, counter, objects, voids = 0, 0, [], []
    plan = [(rng.choice(VOID_IDS), int(rng.integers(150, 400))) for _ in range(2)]
    plan += [(int(rng.choice(class_ids)), int(rng.integers(40, 100) if rng.random() < 0.3 else rng.integers(100, 450)))
             for _ in range(int(rng.integers(5, 9)))]
    if excused:
        plan += [(EXCUSED_ID, int(rng.integers(120, 300)))]
    for label, size in plan:
        size = min(size, num_verts - start - 150)          # leave >= 150 unannotated vertices
        if size < 40:
            break
        counter += 1
        gt[order[start:start + size]] = label * 1000 + counter
        (voids if label in VOID_IDS else objects).append(order[start:start + size])
        start += size
    void_pool = np.flatnonzero(~np.isin(gt // 1000, VALID_CLASS_IDS))

    def label_of(points):
        return int(gt[points[0]] // 1000)

    def noisy(points, keep, extra_from, extra_fraction):
        kept = points[rng.random(len(points)) < keep]
        extra = rng.choice(extra_from, size=min(len(extra_from), int(len(points) * extra_fraction)), replace=False)
        mask = np.zeros(num_verts, bool)
        mask[kept], mask[extra] = True, True
        return mask

    preds = []
    pick = lambda: rng.choice(class_ids)                                    # noqa: E731
    for points in objects:
        if label_of(points) == EXCUSED_ID:
            continue
        for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):                   # noisy copies and duplicates
            mask = noisy(points, rng.uniform(0.45, 1.0), np.arange(num_verts), rng.uniform(0.0, 0.7))
            preds.append((mask, label_of(points) if rng.random() < 0.85 else int(pick())))
    for _ in range(2):                                                      # merges of two same-class instances
        a, b = rng.choice(len(objects), 2, replace=False)
        if label_of(objects[a]) == label_of(objects[b]) != EXCUSED_ID:
            mask = noisy(np.concatenate([objects[a], objects[b]]), rng.uniform(0.7, 1.0), void_pool, 0.1)
            preds.append((mask, label_of(objects[a])))
    for _ in range(3):                                                      # mostly void: excused at some thresholds
        host = objects[rng.integers(len(objects))]
        mask = noisy(host, rng.uniform(0.0, 0.6), void_pool, rng.uniform(0.3, 1.5))
        preds.append((mask, label_of(host) if label_of(host) != EXCUSED_ID else int(pick())))
    for points in objects:                                                  # on small instances
        if len(points) < 100 and label_of(points) != EXCUSED_ID:
            mask = noisy(points, 1.0, np.arange(num_verts), rng.uniform(0.4, 1.2))
            preds.append((mask, label_of(points)))
    for _ in range(2):                                                      # clutter and too-small predictions
        for size in (int(rng.integers(100, 300)), int(rng.integers(20, 99))):
            mask = np.zeros(num_verts, bool)
            mask[rng.choice(num_verts, size, replace=False)] = True
            preds.append((mask, int(pick())))
    if excused:                                                             # the all-excused class: void only
        for _ in range(3):
            mask = np.zeros(num_verts, bool)
            mask[rng.choice(void_pool, int(rng.integers(100, 200)), replace=False)] = True
            preds.append((mask, EXCUSED_ID))
    order = rng.permutation(len(preds))
    scores = np.round(rng.random(len(preds)), 2)                            # 2 decimals: some tied scores
    return gt, [(preds[i][0], preds[i][1], float(scores[k])) for k, i in enumerate(order)]


def score_official(official, scenes, data_dir: Path, drop_label: int | None = None):
    """Writes the scenes in the benchmark's formats and runs its matching and AP -> (ap [18, 10], averages)."""
    for old in data_dir.rglob("*.txt"):
        old.unlink()
    (data_dir / "pred_mask").mkdir(exist_ok=True)
    gt_dir = data_dir / "gt"
    gt_dir.mkdir(exist_ok=True)
    matches = {}
    for s, (gt, preds) in enumerate(scenes):
        np.savetxt(gt_dir / f"scene{s}.txt", gt, fmt="%d")
        lines = []
        for i, (mask, label, score) in enumerate(preds):
            if label == drop_label:
                continue
            np.savetxt(data_dir / "pred_mask" / f"scene{s}_{i:03d}.txt", mask.astype(np.int64), fmt="%d")
            lines.append(f"pred_mask/scene{s}_{i:03d}.txt {label} {score!r}")
        (data_dir / f"scene{s}.txt").write_text("\n".join(lines) + "\n" if lines else "")
        gt2pred, pred2gt = official.assign_instances_for_scan(str(data_dir / f"scene{s}.txt"),
                                                              str(gt_dir / f"scene{s}.txt"), str(data_dir))
        matches[str(gt_dir / f"scene{s}.txt")] = {"gt": gt2pred, "pred": pred2gt}
    ap = official.evaluate_matches(matches)
    averages = official.compute_averages(ap)
    return ap[0], {key: float(averages[key]) for key in ("all_ap", "all_ap_50%", "all_ap_25%")}


def as_json(values):
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(values)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scannet-git", type=Path, required=True, help="git directory of a ScanNet clone")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=6, help="random cases, besides the all-excused one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir, data_dir = Path(scratch) / "official", Path(scratch) / "data"
        workdir.mkdir()
        data_dir.mkdir()
        official = load_official(args.scannet_git, workdir, data_dir)
        arrays, expected, seed = {}, {"official": {"repository": "github.com/ScanNet/ScanNet", "commit": COMMIT,
                                                   "script": FILES[0], "port": [list(p) for p in PORT]},
                                      "overlaps": [float(o) for o in official.opt.overlaps],
                                      "min_region_size": int(official.opt.min_region_sizes[0]),
                                      "valid_class_ids": VALID_CLASS_IDS, "cases": []}, 0
        while len(expected["cases"]) <= args.cases:
            excused = len(expected["cases"]) == args.cases
            seed += 1
            rng = np.random.default_rng(seed)
            scenes = [make_scene(rng, int(rng.integers(1800, 2400)), USED_IDS, excused) for _ in range(3)]
            case = {"seed": seed}
            try:
                ap, averages = score_official(official, scenes, data_dir)
            except IndexError as err:
                if not excused:          # a random class whose predictions all happen to be excused: next seed
                    continue
                case["official_error"] = f"IndexError: {err}"
                ap, averages = score_official(official, scenes, data_dir, drop_label=EXCUSED_ID)
                case["scored_without_label_id"] = EXCUSED_ID
            else:
                if excused:
                    raise RuntimeError("the all-excused case did not raise IndexError in the official script")
            case["ap"], case["averages"] = as_json(ap), averages
            c = len(expected["cases"])
            for s, (gt, preds) in enumerate(scenes):
                key = f"c{c}_s{s}"
                arrays[f"{key}_gt_ids"] = gt
                arrays[f"{key}_num_verts"] = np.array(len(gt))
                arrays[f"{key}_pred_masks"] = np.packbits(np.array([p[0] for p in preds]), axis=1)
                arrays[f"{key}_pred_label_ids"] = np.array([p[1] for p in preds], np.int64)
                arrays[f"{key}_pred_scores"] = np.array([p[2] for p in preds], np.float64)
            case["num_scenes"] = len(scenes)
            expected["cases"].append(case)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "cases.npz", **arrays)
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
