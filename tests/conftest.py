"""Shared fixtures: tiny synthetic ScanNet scans written in the real on-disk layout.

The suite runs single-threaded unless OMP_NUM_THREADS is set: multi-threaded CPU reductions (torch and
MinkowskiEngine's OpenMP kernels, which read the variable once, at load) sum in a varying order, moving results
by ~1e-6 between identical runs, and the exact-resume test compares bit for bit.
"""
import os
import re
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from datamodules.synthetic.scannet import generate_scannet  # noqa: E402


@pytest.fixture(scope="session")
def tiny_scannet(tmp_path_factory):
    """Two scans (one train, one val) of 4 frames each: colour 128×96, depth 40×30, .sens and exports."""
    root = tmp_path_factory.mktemp("scannet")
    generate_scannet(root, num_scenes=2, frames_per_scene=4, color_size=(128, 96), depth_size=(40, 30), seed=0)
    return root


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state, so no statistical tolerance is left to chance."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)


def pytest_addoption(parser):
    parser.addoption("--learning-seed", type=int, default=0,
                     help="seed of the tests marked 'learning' (scripts/check_learning_tests.sh runs 0, 1 and 2)")


# What `make test-fast` leaves out besides the tests marked ddp, learning or slow: runs through the CLI, kill and
# resume, learning runs that seed themselves, and the shipped configs (node-id prefixes: a file, or one test of it
# with all its parameters). Chosen from measured durations (README, "Tests and benchmarks").
INTEGRATION = (
    "tests/test_cli_errors.py",
    "tests/test_kill_resume.py",
    "tests/test_kill_resume_pipelines.py",
    "tests/test_lightning_command.py",
    "tests/test_pointbind_cli.py",
    "tests/test_sepe_learning.py",
    "tests/test_shipped_configs.py",
    "tests/test_checkpoints_pointbind.py::test_zero_shot_test_of_a_release_through_the_cli",
    "tests/test_pointbind.py::test_zero_shot_cli",
    "tests/test_text4point_detection.py::test_oriented_boxes_run_through_the_cli_with_twelve_heading_bins",
    "tests/test_text4point_finetune.py::test_each_ablation_overlay_switches_exactly_its_row",
    "tests/test_text4point_finetune.py::test_ablation_rows_with_pre_training_need_a_checkpoint",
    "tests/test_text4point_instance.py::test_configs_fit_then_test_as_make_runs_them",
    "tests/test_text4point_pretrain.py::test_encoder_level_alignment_fits_a_batch",
    "tests/test_text4point_pretrain.py::test_resume_from_checkpoint_continues_exactly",
    "tests/test_text4point_pretrain.py::test_cli_fit_with_the_shipped_configs_logs_to_tensorboard",
    "tests/test_writers.py::test_every_config_stack_configures_its_writer_once",
    "tests/test_writers.py::test_arithmetic_config_writes_the_ranking_json",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "ddp: runs the CLI under Lightning DDP with 2 CPU processes (gloo)")
    config.addinivalue_line("markers", "integration: a CLI run, kill / resume, a self-seeded learning run or a shipped "
                                       "config (conftest.INTEGRATION); left out of `make test-fast`")
    config.addinivalue_line("markers", "learning: a training run whose result is asserted with a margin; seeded by "
                                       "--learning-seed (scripts/check_learning_tests.sh: seeds 0-2, 1 and 2 threads)")


@pytest.fixture
def learning_seed(request) -> int:
    """The seed a 'learning' test trains with (``--learning-seed``, default 0)."""
    return request.config.getoption("--learning-seed")


def pytest_collection_modifyitems(config, items):
    """Marks the tests of ``INTEGRATION`` ``integration``. An entry whose file or test function does not exist is an
    error: a renamed test would otherwise move into the fast loop unseen."""
    root = Path(str(config.rootpath))
    stale = []
    for entry in INTEGRATION:
        file, _, test = entry.partition("::")
        path = root / file
        if not path.is_file() or (test and not re.search(rf"^def {re.escape(test)}\(", path.read_text(), re.M)):
            stale.append(entry)
    if stale:
        raise pytest.UsageError(f"tests/conftest.py INTEGRATION names tests that do not exist: {stale}")
    for item in items:
        if any(item.nodeid == e or item.nodeid.startswith((e + "::", e + "[")) for e in INTEGRATION):
            item.add_marker(pytest.mark.integration)
