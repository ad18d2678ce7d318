"""The project uses lightning and open_clip through their public API only: no module imports a name starting with
an underscore from them (nor reaches such a name as an attribute of them)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lang3d", "text4point", "pointbind", "sepe", "datamodules", "benchmarks", "scripts")
LIBRARIES = ("lightning", "open_clip", "pytorch_lightning")


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}   # local name -> library module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in LIBRARIES:
                    aliases[(a.asname or a.name).split(".")[0]] = a.name
                    if any(part.startswith("_") for part in a.name.split(".")):
                        found.append(f"import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"from {node.module} import ...")
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"from {node.module} import {a.name}")
    for node in ast.walk(tree):   # lightning.x._y / open_clip._y through a module alias
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"{ast.unparse(node)}")
    return [f"{path.relative_to(REPO)}: {use}" for use in found]


def _project_files():
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_the_checker_finds_private_uses(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import lightning as L\nfrom lightning.pytorch.cli import _InstantiatorFn\n"
                      "from open_clip.pretrained import _PRETRAINED\nx = L.pytorch.cli._get_module_type\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        uses = _private_uses(sample)
    finally:
        REPO = saved
    assert len(uses) == 3, uses


def test_no_private_names_of_lightning_or_open_clip():
    files = _project_files()
    assert len(files) > 100
    assert [use for path in files for use in _private_uses(path)] == []
