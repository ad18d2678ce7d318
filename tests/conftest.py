"""Shared fixtures: tiny synthetic ScanNet scans written in the real on-disk layout.

The suite runs single-threaded unless OMP_NUM_THREADS is set: multi-threaded CPU reductions (torch and
MinkowskiEngine's OpenMP kernels, which read the variable once, at load) sum in a varying order, moving results
by ~1e-6 between identical runs, and the exact-resume test compares bit for bit.
"""
import os

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


def pytest_configure(config):
    config.addinivalue_line("markers", "ddp: runs the CLI under Lightning DDP with 2 CPU processes (gloo)")
    config.addinivalue_line("markers", "learning: a training run whose result is asserted with a margin; seeded by "
                                       "--learning-seed (scripts/check_learning_tests.sh: seeds 0-2, 1 and 2 threads)")


@pytest.fixture
def learning_seed(request) -> int:
    """The seed a 'learning' test trains with (``--learning-seed``, default 0)."""
    return request.config.getoption("--learning-seed")
