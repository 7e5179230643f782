import pytest
import torch

from asymcl.data.augment import PRESETS, build_augmentation

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
