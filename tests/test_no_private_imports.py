"""The project (its packages, scripts, benchmarks and tests) uses its libraries through their public API only: no
module imports a name starting with an underscore from them (nor reaches such a name as an attribute of them), and
no code reads the private attributes of their objects listed in ``PRIVATE_ATTRIBUTES``."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lang3d", "text4point", "pointbind", "sepe", "datamodules", "benchmarks", "scripts", "tests")
LIBRARIES = ("lightning", "pytorch_lightning", "open_clip", "torch", "torchvision", "torchaudio", "torchmetrics",
             "MinkowskiEngine")
# Private attributes of the libraries' objects (the checker cannot tell an object's type, so these names are refused
# on any object): a LightningModule's trainer / fabric, a tensor's version counter, the Trainer's loops (of private
# types such as ``_FitLoop``).
PRIVATE_ATTRIBUTES = ("_trainer", "_fabric", "_version", "fit_loop", "validate_loop", "test_loop", "predict_loop")


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
    for node in ast.walk(tree):   # lightning.x._y / torch._y through a module alias, or a listed attribute
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr in PRIVATE_ATTRIBUTES:
            found.append(ast.unparse(node))
        elif node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(ast.unparse(node))
    return [f"{path.relative_to(REPO)}: {use}" for use in found]


def _project_files():
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_the_checker_finds_private_uses(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import lightning as L\nimport open_clip\nimport torch\n"
                      "from lightning.pytorch.cli import _InstantiatorFn\n"
                      "from open_clip.pretrained import _PRETRAINED\nx = L.pytorch.cli._get_module_type\n"
                      "from torch.nn.modules.batchnorm import _BatchNorm, BatchNorm1d\n"
                      "from torch._dynamo import config\ny = torch._C\nz = open_clip.pretrained._PRETRAINED\n"
                      "a = self._trainer\nb = ctx._version\ntrainer.fit_loop.setup_data()\n"
                      "c = self._own_attribute\nd = torch.nn.BatchNorm1d\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        uses = _private_uses(sample)
    finally:
        REPO = saved
    assert sorted(use.split(": ", 1)[1] for use in uses) == sorted([
        "from lightning.pytorch.cli import _InstantiatorFn", "from open_clip.pretrained import _PRETRAINED",
        "L.pytorch.cli._get_module_type", "from torch.nn.modules.batchnorm import _BatchNorm",
        "from torch._dynamo import ...", "torch._C", "open_clip.pretrained._PRETRAINED", "self._trainer",
        "ctx._version", "trainer.fit_loop"]), uses


def test_no_private_names_of_the_libraries():
    files = _project_files()
    assert len(files) > 200 and REPO / "tests" / "test_clip.py" in files
    assert [use for path in files for use in _private_uses(path)] == []
