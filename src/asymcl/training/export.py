"""Export a finished run's final model for deployment (ONNX or TorchScript).

The exported graph takes what a deployment has: raw images as uint8, shape (B, C, H, W) with the
run's channels and size (``metrics.json``'s ``input``), and returns class probabilities (B, K) in
the order of ``metrics.json``'s ``classes``. Everything between is inside the file: the scaling to
[0, 1], the encoder's own input standardisation, the encoder, the classifier and the softmax.
Resizing is not inside: a deployment resizes to (H, W) with its own image library, as
``asymcl predict`` does with Pillow.

The exported model is single-view: one forward pass per image, its probabilities those of
``asymcl predict`` without ``--tta``. A run with ``eval.tta_views`` records its test-time-augmented
metrics in ``metrics.json`` ``final`` and the single-view ones, which the exported model
reproduces, in ``final_single_view``; ``asymcl predict --tta`` gives the augmented predictions.

ONNX is written with torch's TorchScript-based exporter (``dynamo=False``): it needs only the
``onnx`` package, is fast, and supports every torch in our range; the batch axis is dynamic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from asymcl.atomic import atomic_file
from asymcl.errors import AsymclError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17


class ExportError(AsymclError):
    """An export that cannot be made: unknown format, a missing exporter package."""


class DeploymentModel(nn.Module):
    """uint8 images (B, C, H, W) -> class probabilities (B, K), float32."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        logits = self.classifier(self.encoder(images.float() / 255.0))
        return torch.softmax(logits.float(), dim=1)


def deployment_model(run_dir: str | Path):
    """(DeploymentModel in eval mode, RunModel) of a finished run's best final model."""
    from asymcl.training.predict import RunModel

    run = RunModel(run_dir)
    model = DeploymentModel(run.module.encoder, run.module.classifier).eval().requires_grad_(False)
    return model, run


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> Path:
    """Write the run's final model as ``fmt`` to ``out`` (default: ``RUN_DIR/model.onnx`` or
    ``model.pt``); returns the path. The file is written to a temporary name and renamed, so an
    interrupted export leaves no half-written model."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it)
        except ImportError:
            raise ExportError("ONNX export needs the onnx package: pip install 'asymcl[export]'") from None
    run_path = Path(run_dir)
    model, run = deployment_model(run_path)
    out_path = Path(out) if out is not None else run_path / f"model{FORMATS[fmt]}"
    if out_path.is_dir():
        raise ExportError(
            f"--out {out_path} is a folder; give a file name such as {out_path / ('model' + FORMATS[fmt])}"
        )
    example = torch.zeros(2, run.channels, *run.size_hw, dtype=torch.uint8)
    # torch.onnx.export takes a file name: it writes the temporary by name (see atomic_file).
    with (
        atomic_file(out_path.parent, target=out_path, prefix=f".{out_path.name}.") as pending,
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        # The TorchScript-based exporter and tracer warn about their own deprecation and about
        # Python control flow that our models do not have; nothing a user can act on.
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(
                model,
                (example,),
                str(pending.temporary),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["probabilities"],
                dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
            )
        else:
            torch.jit.save(torch.jit.trace(model, example), pending.handle)
    return out_path
