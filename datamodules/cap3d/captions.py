"""Reader of Cap3D caption files: CSV without header, two columns ``uid,caption`` (captions CSV-quoted when they
hold commas, quotes or line breaks), e.g. ``Cap3D_automated_ABO.csv`` or ``Cap3D_automated_Objaverse_full.csv``."""
from __future__ import annotations

import csv
from pathlib import Path


class Cap3DFormatError(ValueError):
    """Cap3D input that cannot be read; the message names the file (and row, member or key) at fault."""


def read_captions(path: str | Path) -> dict[str, str]:
    """uid -> caption, in file order; blank lines are skipped (as pandas does).

    A row without exactly two fields, an empty uid or caption, a uid that is not a plain file name (it names the
    object's files) or a repeated uid is an error naming the file, the row (1-based CSV record) and its line; a
    file without any caption is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Cap3D caption file {path} does not exist")
    captions: dict[str, str] = {}
    rows: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, strict=True)
        row_no = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise Cap3DFormatError(f"{path} row {row_no + 1} (line {reader.line_num}): {err}") from None
            if not row:  # a blank line (pandas skips them too)
                continue
            row_no += 1
            where = f"{path} row {row_no} (line {reader.line_num})"
            if len(row) != 2:
                raise Cap3DFormatError(f"{where}: {len(row)} fields, expected 2 (uid,caption)")
            uid, caption = row[0].strip(), row[1].strip()
            if not uid or not caption:
                raise Cap3DFormatError(f"{where}: empty {'uid' if not uid else 'caption'}")
            if "/" in uid or "\\" in uid or uid.startswith("."):
                raise Cap3DFormatError(f"{where}: uid {uid!r} is not a plain file name")
            if uid in captions:
                raise Cap3DFormatError(f"{where}: uid {uid} repeats row {rows[uid]}")
            captions[uid] = caption
            rows[uid] = row_no
    if not captions:
        raise Cap3DFormatError(f"Cap3D caption file {path} is empty: no uid,caption rows")
    return captions
