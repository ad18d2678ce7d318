"""One table of every benchmark figure recorded in a run of the scripts (see ``lang3d.training.timing.record``).

    LANG3D_BENCH_RECORD=runs/benchmarks/figures.jsonl python benchmarks/<script>.py ...
    python benchmarks/summary.py runs/benchmarks/figures.jsonl runs/benchmarks/summary.md

Writes a Markdown table (script, figure, value, unit, machine, date) and prints it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}"


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    if not source.is_file():
        sys.exit(f"no benchmark figures recorded in {source}")
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    where, when = machine(), datetime.date.today().isoformat()
    lines = ["| script | figure | value | unit | machine | date |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['script']} | {r['figure']} | {r['value']:.4g} | {r['unit']} | {where} | {when} |" for r in rows]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nsummary written to {target}")


if __name__ == "__main__":
    main()
