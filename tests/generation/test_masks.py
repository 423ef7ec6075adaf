import pytest
import torch

from generation.masks import block_mask, grid_keep_mask_from_pixels, random_block_mask
from infra.errors import UserError


def bool_grid(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_a_latent_is_kept_only_if_all_its_pixels_are_kept_non_square():
    # 4x6 pixels, f=2 -> 2x3 latents; one dropped pixel is enough to drop its latent.
    pixel_keep = bool_grid([
        [1, 1, 1, 1, 1, 1],
        [1, 0, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
    ])
    assert torch.equal(grid_keep_mask_from_pixels(pixel_keep, 2), bool_grid([[0, 1, 1], [1, 1, 0]]))
    # The transposed image gives the transposed latent mask (6x4 -> 3x2).
    assert torch.equal(grid_keep_mask_from_pixels(pixel_keep.T, 2), bool_grid([[0, 1, 1], [1, 1, 0]]).T)


def test_factor_three_and_factor_one():
    pixel_keep = torch.ones(6, 9, dtype=torch.bool)
    pixel_keep[5, 8] = False  # the last pixel of the bottom-right 3x3 block
    expected = torch.ones(2, 3, dtype=torch.bool)
    expected[1, 2] = False
    assert torch.equal(grid_keep_mask_from_pixels(pixel_keep, 3), expected)
    assert torch.equal(grid_keep_mask_from_pixels(pixel_keep, 1), pixel_keep)


def test_pixel_block_maps_to_every_latent_it_touches():
    # Pixels rows 2-3, cols 3-4 on an 8x12 image; with f=2 they touch latent row 1, cols 1 and 2.
    keep = ~block_mask(8, 12, y=2, x=3, bh=2, bw=2)
    expected = torch.ones(4, 6, dtype=torch.bool)
    expected[1, 1:3] = False
    assert torch.equal(grid_keep_mask_from_pixels(keep, 2), expected)


def test_numpy_masks_are_accepted():
    np = pytest.importorskip("numpy")
    assert grid_keep_mask_from_pixels(np.ones((4, 4), dtype=bool), 2).all()


@pytest.mark.parametrize(
    "pixel_keep, f, message",
    [
        (torch.ones(5, 6, dtype=torch.bool), 2, "5x6 is not divisible by the downsampling factor 2"),
        (torch.ones(4, 6, dtype=torch.bool), 4, "not divisible"),
        (torch.ones(4, 4, dtype=torch.bool), 0, "downsampling factor must be an integer >= 1"),
        (torch.ones(4, 4), 2, "2D bool"),
        (torch.ones(1, 4, 4, dtype=torch.bool), 2, "2D bool"),
    ],
)
def test_bad_pixel_masks_are_errors(pixel_keep, f, message):
    with pytest.raises(UserError, match=message):
        grid_keep_mask_from_pixels(pixel_keep, f)


def test_block_mask_by_hand():
    expected = bool_grid([
        [0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0],
    ])
    assert torch.equal(block_mask(4, 5, y=1, x=2, bh=2, bw=3), expected)


@pytest.mark.parametrize("y, x, bh, bw", [(3, 0, 2, 2), (0, 4, 1, 2), (-1, 0, 1, 1), (0, 0, 0, 1)])
def test_block_outside_the_grid_is_an_error(y, x, bh, bw):
    with pytest.raises(UserError, match="inside the 4x5 grid"):
        block_mask(4, 5, y, x, bh, bw)


def test_one_random_block_is_a_full_square_inside_the_grid():
    for seed in range(20):
        mask = random_block_mask(7, 10, n=1, size=3, generator=torch.Generator().manual_seed(seed))
        rows, cols = mask.nonzero(as_tuple=True)
        assert mask.sum() == 9
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2


def test_random_blocks_are_a_seeded_union():
    make = lambda seed: random_block_mask(16, 12, n=4, size=3, generator=torch.Generator().manual_seed(seed))
    mask = make(0)
    assert torch.equal(mask, make(0))
    assert not all(torch.equal(mask, make(seed)) for seed in range(1, 5))
    assert 9 <= mask.sum() <= 4 * 9
    assert not random_block_mask(5, 5, n=0, size=2).any()


@pytest.mark.parametrize("n, size", [(-1, 2), (1, 0), (1, 6)])
def test_bad_random_blocks_are_errors(n, size):
    with pytest.raises(UserError, match="random block"):
        random_block_mask(5, 8, n, size)
