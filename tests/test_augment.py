import pytest
import torch

from asymcl.data.augment import PRESETS, build_augmentation
from asymcl.errors import DataError

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "preset,channels,size",
    [("grey28", 1, (28, 28)), ("grey28", 1, (8, 8)), ("dermoscopy", 3, (32, 32)), ("dermoscopy", 1, (28, 28))],
)
def test_preset_shapes_range_and_randomness(preset, channels, size):
    augment = build_augmentation(preset, size, channels)
    images = torch.rand(16, channels, *size)
    torch.manual_seed(0)
    first = augment(images)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    torch.manual_seed(0)
    assert torch.equal(augment(images), first)  # seeded: reproducible
    second = augment(images)
    assert not torch.equal(first, second)  # a fresh draw differs
    # independent parameters per image: two copies of one image come out different
    same = images[:1].repeat(2, 1, 1, 1)
    out = augment(same)
    assert not torch.equal(out[0], out[1])


def test_none_is_identity_and_unknown_preset_errors():
    images = torch.rand(2, 1, 8, 8)
    assert torch.equal(build_augmentation("none", (8, 8), 1)(images), images)
    assert "grey28" in PRESETS and "dermoscopy" in PRESETS
    with pytest.raises(ValueError, match="grey28"):
        build_augmentation("cifar", (8, 8), 1)


def test_dihedral_views_are_the_seven_symmetries_of_the_square_in_a_fixed_order():
    from asymcl.data.augment import Dihedral

    image = torch.arange(9.0).view(1, 1, 3, 3)
    views = build_augmentation("dihedral", (3, 3), 1)(image.expand(7, -1, -1, -1))
    plain = image[0, 0]
    expected = [
        plain.flip(1),  # horizontal flip
        plain.flip(0),  # vertical flip
        torch.rot90(plain, 2),  # half turn
        plain.T,  # transpose
        torch.rot90(plain, -1),  # quarter turn clockwise
        torch.rot90(plain, 1),  # three-quarter turn
        torch.rot90(plain, 2).T,  # anti-transpose
    ]
    for view, want in zip(views[:, 0], expected, strict=True):
        assert torch.equal(view, want)
    # with the identity they are the 8 distinct images of the group; no random draw
    assert len({tuple(v.flatten().tolist()) for v in [plain, *views[:, 0]]}) == 8
    again = build_augmentation("dihedral", (3, 3), 1)(image.expand(7, -1, -1, -1))
    assert torch.equal(views, again)
    # a non-square image keeps its shape under the flips and the half turn only
    wide = torch.rand(3, 2, 4, 6)
    assert Dihedral((4, 6))(wide).shape == wide.shape
    with pytest.raises(DataError, match="3 views of a non-square image.*eval.tta_views asks for 4"):
        Dihedral((4, 6))(torch.rand(4, 2, 4, 6))


def test_dihedral_is_a_test_time_choice_with_at_most_seven_views():
    from asymcl.errors import ConfigError
    from asymcl.training.config import resolve_config

    assert resolve_config({"method": "ce", "eval.tta_views": 7, "eval.tta_augment": "dihedral"})
    with pytest.raises(ConfigError, match="has 7 views.*is 8: set it to 7 or fewer"):
        resolve_config({"method": "ce", "eval.tta_views": 8, "eval.tta_augment": "dihedral"})
    with pytest.raises(ConfigError, match="needs eval.tta_views"):
        resolve_config({"method": "ce", "eval.tta_augment": "dihedral"})
    with pytest.raises(ConfigError, match="data.augment"):
        resolve_config({"method": "ce", "data.augment": "dihedral"})  # not a training augmentation
