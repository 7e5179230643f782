"""data.cache_engine: ONNX Runtime runs the feature cache's fp32 passes as torch does, and says so
where it cannot."""

import numpy as np
import pytest
import torch

from asymcl.data import ArrayImageDataset
from asymcl.data.cache_engine import fp32_runner, onnx_runner
from asymcl.data.feature_cache import build_feature_cache
from asymcl.errors import ConfigError, DataError
from asymcl.training.config import config_differences, resolve_config, run_identity
from asymcl.training.encoder import build_encoder

torch.set_num_threads(1)


def _frozen_part(backbone, size=48, **model):
    """The frozen part a run's cache runs: built as the pipeline builds it, random weights and
    batch-norm statistics (so nothing is an identity)."""
    config = resolve_config(
        {
            "method": "afcl",
            "data.dataset": "digits",
            "model.backbone": backbone,
            "model.finetune": "frozen",
            **{f"model.{k}": v for k, v in model.items()},
        }
    )
    torch.manual_seed(0)
    encoder = build_encoder(config, 3, (size, size), load_pretrained=False)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return encoder.frozen_input().eval()


@pytest.mark.parametrize(
    "backbone, model",
    [
        ("efficientnet_lite0", {}),
        ("small_cnn", {}),
        ("efficientnet_lite2+efficientnet_lite0", {}),  # the ISIC pair: two networks, concatenated
        ("efficientnet_lite0", {"feature_layers": ["block10", "block14", "head"]}),  # pooled taps
        ("efficientnet_lite0", {"finetune": "last:2"}),  # the frozen prefix's maps (last:K)
    ],
)
def test_onnxruntime_computes_what_torch_computes(backbone, model):
    frozen = _frozen_part(backbone, **model)
    images = torch.rand(5, 3, 48, 48)
    with torch.inference_mode():
        expected = frozen(images)
    got = onnx_runner(frozen, images[:2])(images)  # a batch size other than the export's
    assert got.shape == expected.shape and got.dtype == torch.float32
    scale = float(expected.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)


def _dataset(n=12):
    rng = np.random.default_rng(0)
    return ArrayImageDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 2, n), ["a", "b"])


def _build(dataset, frozen, folder, engine, **kwargs):
    return build_feature_cache(
        dataset,
        frozen,
        augmentation="dermoscopy_lite",
        views=2,
        seed=0,
        cache_dir=folder,
        precision="fp32",
        engine=engine,
        **kwargs,
    )


def test_a_cache_either_engine_wrote_is_the_same_entry_with_the_same_float16_numbers(tmp_path):
    dataset, frozen = _dataset(), _frozen_part("efficientnet_lite0", 32)
    lines = []
    by_torch = _build(dataset, frozen, tmp_path / "torch", "torch", log=lines.append)
    by_ort = _build(dataset, frozen, tmp_path / "ort", "onnxruntime", log=lines.append)
    assert by_torch.path.name == by_ort.path.name  # the engine is not part of the key
    assert any(line.endswith("fp32 on onnxruntime)") for line in lines)
    for ours, theirs in ((by_ort.clean, by_torch.clean), (by_ort.views, by_torch.views)):
        a, b = ours.float(), theirs.float()
        # float16 has 10 fraction bits: at most one step apart, most of them equal
        step = torch.maximum(a.abs(), b.abs()) * 2.0**-10 + 2.0**-24
        assert bool(((a - b).abs() <= step).all())
        assert float((a == b).float().mean()) > 0.9


def test_each_extraction_records_its_engine_and_precision_in_the_entry(tmp_path):
    """What computed an entry's features is kept beside it (``extractions.json``), for the cost
    tables: one record per extraction, none for a build that found everything."""
    from asymcl.data.cache_store import read_extractions

    dataset, frozen = _dataset(6), _frozen_part("efficientnet_lite0", 32)
    by_ort = _build(dataset, frozen, tmp_path, "onnxruntime", log=lambda line: None)
    by_torch = _build(dataset, frozen, tmp_path / "torch", "torch", log=lambda line: None)
    _build(dataset, frozen, tmp_path, "onnxruntime", log=lambda line: None)  # all cached: no record
    (ort,) = read_extractions(by_ort.path)
    (plain,) = read_extractions(by_torch.path)
    assert (ort["engine"], plain["engine"]) == ("onnxruntime", "torch")
    for record in (ort, plain):
        assert record["precision"] == "fp32" and record["device"] == "cpu"
        assert record["images"] == record["of"] == 6 and record["outputs_per_image"] == 3
        assert record["seconds"] > 0 and record["finished"].endswith("+00:00")


class _NoOnnx(torch.nn.Module):
    """A frozen part with an operator the ONNX exporter does not have."""

    def forward(self, images):
        return torch.special.erfcx(images).mean(dim=(2, 3))


def test_auto_falls_back_to_torch_in_one_line_and_onnxruntime_refuses_in_one(tmp_path):
    dataset = _dataset(4)
    lines = []
    cache = _build(dataset, _NoOnnx(), tmp_path / "auto", "auto", log=lines.append)
    said = [line for line in lines if "does not export to ONNX" in line]
    assert len(said) == 1 and "extracting with torch" in said[0] and "\n" not in said[0]
    assert not any("onnxruntime)" in line for line in lines)
    expected = torch.special.erfcx(dataset.load_all()[0].float() / 255).mean(dim=(2, 3))
    torch.testing.assert_close(cache.clean.float(), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(DataError, match=r"cache_engine=onnxruntime could not export.*set data.cache_engine=torch"):
        _build(dataset, _NoOnnx(), tmp_path / "ort", "onnxruntime", log=lines.append)


def test_bad_engines_are_config_errors_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="cache_engine"):
        resolve_config({"method": "afcl", "data.cache_engine": "onnx"})
    with pytest.raises(ConfigError, match="auto, torch, onnxruntime"):
        _build(_dataset(2), _NoOnnx(), tmp_path, "tensorrt")
    with pytest.raises(ConfigError, match="CPU only.*set data.cache_engine=auto"):
        fp32_runner(_NoOnnx(), torch.rand(1, 3, 8, 8), "onnxruntime", torch.device("cuda"), print)
    # on a GPU, auto is torch
    assert fp32_runner(_NoOnnx(), torch.rand(1, 3, 8, 8), "auto", torch.device("cuda"), print) is None


def test_the_engine_names_no_run_and_changes_no_result():
    auto = resolve_config({"method": "afcl"})
    pinned = resolve_config({"method": "afcl", "data.cache_engine": "torch"})
    assert auto.data.cache_engine == "auto"
    assert config_differences(auto, pinned) == []
    assert run_identity(auto) == run_identity(pinned)
