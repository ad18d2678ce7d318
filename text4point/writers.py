"""What ``lightning test`` writes for the Text4Point fine-tuning tasks, as callbacks (``trainer.callbacks`` in
``configs/text4point/*.yaml``): each writes what its module's ``test_step`` returns under the run's log directory,
every file atomically (``lang3d.training.atomic``), each DDP process the samples it evaluated."""
from __future__ import annotations

import numpy as np

from lang3d.training.atomic import atomic_write
from lang3d.training.writers import BaseTestWriter
from lang3d.visual.ply import write_point_ply
from lang3d.visual.tensorboard import label_colors
from text4point.finetune import RoomLabels, Text4PointSegmentation
from text4point.instance import RoomInstances


class SegmentationPredictionWriter(BaseTestWriter):
    """Per room of ``Text4PointSegmentation.test_step``: ``<log dir>/predictions/<area>/<room>.labels.npy`` (int64
    class per point, in the prepared room's order) and ``<room>.ply`` (the points coloured by class, with a
    ``label`` property)."""

    def __init__(self, folder: str = "predictions"):
        super().__init__(folder)

    def write(self, outputs: list[RoomLabels], pl_module: Text4PointSegmentation) -> None:
        for room in outputs:
            path = self.output_dir / room.name
            with atomic_write(path.with_suffix(".labels.npy")) as f:
                np.save(f, room.labels.astype(np.int64))
            write_point_ply(path.with_suffix(".ply"), room.xyz, label_colors(room.labels, len(pl_module.class_names)),
                            label=room.labels.astype(np.uint16))


class DetectionPredictionWriter(BaseTestWriter):
    """Per scene of ``Text4PointDetection.test_step``: ``<log dir>/predictions/<scene>.npy``, the structured array
    of its ``text4point.detection.PREDICTION_DTYPE`` rows."""

    def __init__(self, folder: str = "predictions"):
        super().__init__(folder)

    def write(self, outputs: dict[str, np.ndarray], pl_module) -> None:
        for name, rows in outputs.items():
            with atomic_write(self.output_dir / f"{name}.npy") as f:
                np.save(f, rows)


class InstancePredictionWriter(BaseTestWriter):
    """Per room of ``Text4PointInstanceSegmentation.test_step``, the ScanNet benchmark's layout under
    ``<log dir>/instances``: ``<area>/<room>.txt`` with one line ``predicted_masks/<room>_<k>.txt <class index>
    <score>`` per instance, and each mask file one 0/1 per line for every point of the room in the prepared room's
    order (``datamodules.s3dis.rooms``). The room's list is written last."""

    def __init__(self, folder: str = "instances"):
        super().__init__(folder)

    def write(self, outputs: list[RoomInstances], pl_module) -> None:
        for room in outputs:
            base = self.output_dir / room.name
            lines = []
            for k, (mask, label, score) in enumerate(zip(room.masks, room.labels, room.scores)):
                relative = f"predicted_masks/{base.name}_{k:03d}.txt"
                text = np.empty(2 * len(mask), dtype=np.uint8)
                text[0::2], text[1::2] = mask.astype(np.uint8) + ord("0"), ord("\n")
                with atomic_write(base.parent / relative) as f:
                    f.write(text.tobytes())
                lines.append(f"{relative} {int(label)} {float(score):.6f}\n")
            with atomic_write(base.parent / f"{base.name}.txt", "w") as f:
                f.write("".join(lines))
