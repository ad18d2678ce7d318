"""scripts/check_lightning_command.sh: which `lightning` command an environment runs (lightning-sdk clash)."""
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_lightning_command.sh"


def _check(venv: Path):
    env = {**os.environ, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(SCRIPT), str(venv)], capture_output=True, text=True, env=env, timeout=60)


def _script(venv: Path, module: str) -> None:
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    path = venv / "bin" / "lightning"
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
    path.chmod(0o755)


def test_this_environments_lightning_is_lang3ds():
    venv = Path(sys.executable).parent.parent
    result = _check(venv)
    assert result.returncode == 0 and "lang3d.training.cli" in result.stdout


def test_a_lightning_sdk_script_is_reported(tmp_path):
    _script(tmp_path / "venv", "lightning_sdk.cli.entrypoint")
    result = _check(tmp_path / "venv")
    assert result.returncode == 1
    assert "is not lang3d's" in result.stderr and "lightning_sdk.cli.entrypoint" in result.stderr
    assert "lang3d" in result.stderr
    _script(tmp_path / "venv", "lang3d.training.cli")
    assert _check(tmp_path / "venv").returncode == 0
