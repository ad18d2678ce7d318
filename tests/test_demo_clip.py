"""The demo's stand-in for pretrained CLIP (lang3d.models.demo_clip): where a random CLIP's dense cells are all alike,
its cells differ, each is a function of its own image region only, and they are white over the images it was made
from."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.synthetic.demo_clip import main as write_demo_clip
from datamodules.synthetic.demo_clip import training_images
from lang3d.models.clip import CLIPDenseImageEncoder, load_clip
from lang3d.models.demo_clip import DEMO_MODEL, build_demo_clip


@pytest.fixture(scope="module")
def images(tiny_scannet):
    """The training scan's 4 frames at 224×224 (the demo model's 7×7 grid)."""
    return training_images(tiny_scannet, (224, 224))


def cell_cosines(encoder, images):
    dense = encoder(images)["dense"]
    cells = F.normalize(dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1]), dim=1)
    sim = cells @ cells.T
    return sim[~torch.eye(len(sim), dtype=torch.bool)]


def test_a_random_clip_has_alike_cells_and_the_demo_clip_does_not(images):
    torch.manual_seed(0)
    random = CLIPDenseImageEncoder(load_clip(DEMO_MODEL, None)[0])
    demo = CLIPDenseImageEncoder(build_demo_clip(images))
    assert cell_cosines(random, images).min() > 0.9999
    assert cell_cosines(demo, images).abs().mean() < 0.3


def test_demo_features_are_white_over_their_images(images):
    demo = CLIPDenseImageEncoder(build_demo_clip(images))
    dense = demo(images)["dense"]
    cells = dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1]).double()
    assert cells.mean(0).abs().max() < 1e-3
    covariance = torch.cov(cells.T, correction=0)
    top = torch.linalg.eigvalsh(covariance)[-10:]   # 196 cells in 32 dimensions: the well-estimated directions
    np.testing.assert_allclose(top.numpy(), 1.0, atol=1e-3)


def test_a_demo_cell_sees_its_own_region_only(images):
    """Repainting one 32×32 cell changes that cell's feature and leaves the features of cells whose trunk receptive
    fields do not reach it unchanged (each position attends to itself); through a random CLIP's attention pool
    every cell moves."""
    demo = CLIPDenseImageEncoder(build_demo_clip(images))
    painted = images[:1].clone()
    painted[:, :, 96:128, 96:128] = torch.tensor([1.0, 0.0, 0.5])[:, None, None]   # cell (3, 3)
    before, after = demo(images[:1])["dense"][0], demo(painted)["dense"][0]
    change = (after - before).norm(dim=0) / before.norm(dim=0).mean()
    assert change[3, 3] > 0.5
    far = torch.ones(7, 7, dtype=torch.bool)
    far[1:6, 1:6] = False   # cells two or more away
    assert change[far].max() < 1e-2, change
    torch.manual_seed(0)
    random = CLIPDenseImageEncoder(load_clip(DEMO_MODEL, None)[0])
    r_before, r_after = random(images[:1])["dense"][0], random(painted)["dense"][0]
    assert ((r_after - r_before).norm(dim=0)[far] > 0).all()


def test_images_off_the_positional_grid_are_refused(images):
    with pytest.raises(ValueError, match="7x7 but images of 192x224 give a 6x7 dense map: use 224x224 images"):
        build_demo_clip(images[:, :, :192])


def test_written_weights_load_as_the_demo_clip(tiny_scannet, tmp_path, images):
    path = tmp_path / "demo_clip.pt"
    write_demo_clip(["--scannet", str(tiny_scannet), "--out", str(path)])
    loaded = CLIPDenseImageEncoder(load_clip(DEMO_MODEL, str(path))[0])
    built = CLIPDenseImageEncoder(build_demo_clip(images))
    torch.testing.assert_close(loaded(images)["dense"], built(images)["dense"])
