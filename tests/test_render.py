"""Point-splat renderer: projection centre, occlusion, background."""
import torch

from lang3d.visual.render import render_points, render_views

RED, GREEN = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]


def test_point_at_origin_lands_at_centre_on_white():
    for az, el in [(0, 0), (37, 20), (200, -45)]:
        img = render_points(torch.zeros(1, 1, 3), torch.tensor([[RED]]), azimuth=az, elevation=el,
                            image_size=9, radius=0)
        drawn = (img[0] != 1).any(0)
        assert drawn.nonzero().tolist() == [[4, 4]]
        assert img[0, :, 4, 4].tolist() == RED
        assert (img[0][:, ~drawn] == 1).all()          # background white


def test_nearer_point_occludes_farther_and_up_is_up():
    # camera on +x looking at origin: the point at x=1 is nearer than the one at x=-1
    xyz = torch.tensor([[[-1.0, 0, 0], [1.0, 0, 0]]])
    img = render_points(xyz, torch.tensor([[RED, GREEN]]), image_size=9, radius=1)
    assert img[0, :, 4, 4].tolist() == GREEN
    img = render_points(xyz.flip(1), torch.tensor([[GREEN, RED]]), image_size=9, radius=1)  # order-independent
    assert img[0, :, 4, 4].tolist() == GREEN
    high = render_points(torch.tensor([[[0.0, 0, 0.5]]]), torch.tensor([[RED]]), image_size=9, radius=0)
    row = (high[0] != 1).any(0).nonzero()[0, 0]
    assert row < 4                                      # +z is drawn above the centre


def test_splat_size_and_views_shape():
    img = render_points(torch.zeros(2, 1, 3), torch.tensor([[RED], [GREEN]]), image_size=11, radius=2)
    assert img.shape == (2, 3, 11, 11)
    assert int((img[0] != 1).any(0).sum()) == 25
    views = render_views(torch.randn(2, 50, 3) * 0.3, torch.rand(2, 50, 3), image_size=16)
    assert views.shape == (2, 4, 3, 16, 16) and views.min() >= 0 and views.max() <= 1
