"""One stack everywhere: requirements.txt (make install, CI), requirements-gpu-machine.txt (what the GPU machine has,
the rehearsal's environment) and requirements-gpu-bundle.txt (what travels to it) must agree, and the bundle must
hold every package the project needs that the machine lacks, with the dependencies of each."""
import importlib.metadata
import re
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SHARED_STACK = ["torch", "torchvision", "torchaudio", "lightning", "torchmetrics", "numpy"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a requirements file's ``name[extras]==version`` lines."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} is not pinned"
            found[canonical(requirement.name)] = specifier.version
    return found


def dependencies(name: str, extras: frozenset = frozenset()) -> set[str]:
    """Canonical names an installed distribution requires on this platform (with ``extras``)."""
    needed = set()
    for text in importlib.metadata.requires(name) or []:
        requirement = Requirement(text)
        environments = [dict(default_environment(), extra=e) for e in (extras or {""})]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
            needed.add(canonical(requirement.name))
            needed |= {f"{canonical(requirement.name)}[{e}]" for e in requirement.extras}
    return needed


def closure(names: set[str], installed_only: bool = False) -> set[str]:
    """``names`` and everything they require, transitively, as installed here; with ``installed_only``, a package this
    environment lacks (the GPU machine's build tools: cmake, pybind11) counts without its dependencies."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        base, _, extra = name.partition("[")
        try:
            todo += dependencies(base, frozenset({extra.rstrip("]")}) if extra else frozenset())
        except importlib.metadata.PackageNotFoundError:
            if not installed_only:
                raise
    return {n.partition("[")[0] for n in seen}


def test_the_gpu_machine_stack_is_the_project_stack():
    project, machine = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-gpu-machine.txt")
    for name in SHARED_STACK:
        assert project[name] == machine[name], f"{name}: requirements.txt {project[name]}, GPU machine {machine[name]}"


def test_bundle_pins_are_the_project_pins():
    project, bundle = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-gpu-bundle.txt")
    for name, version in bundle.items():
        if name in project:
            assert version == project[name], f"{name}: bundle {version}, requirements.txt {project[name]}"
        assert importlib.metadata.version(name) == version, f"{name}: installed {importlib.metadata.version(name)}"


def test_machine_plus_bundle_hold_everything_the_project_needs():
    machine = closure(set(pins(ROOT / "requirements-gpu-machine.txt")), installed_only=True)
    bundle = set(pins(ROOT / "requirements-gpu-bundle.txt"))
    project_lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    project = {canonical(Requirement(line).name) + "".join(f"[{e}]" for e in Requirement(line).extras)
               for line in project_lines if line}
    missing = closure(project) - machine - bundle
    assert not missing, f"needed by requirements.txt but neither on the GPU machine nor in the bundle: {missing}"
    carried_for_nothing = bundle - closure(project)
    assert not carried_for_nothing, f"requirements-gpu-bundle.txt carries what nothing needs: {carried_for_nothing}"
