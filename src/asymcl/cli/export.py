"""``asymcl export``: a finished run's model as ONNX or TorchScript, fed raw uint8 images."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a finished run's model (preprocessing included) as ONNX or TorchScript",
        description="Write the run's best final model (encoder + classifier, with the input scaling "
        "inside) for deployment. Input: uint8 images (batch, channels, height, width) at the run's "
        "size; output: class probabilities in the order of metrics.json's classes. The model is single-view "
        "(one pass per image, no test-time augmentation): it reproduces metrics.json's final_single_view "
        "of a run with eval.tta_views; asymcl predict --tta gives the augmented predictions.",
    )
    export.add_argument("run", metavar="RUN_DIR", help="run directory made by asymcl train")
    # No argparse choices: they would need torch imported for `asymcl --help`; export_run checks.
    export.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    export.add_argument("--out", help="file to write (default: RUN_DIR/model.onnx or RUN_DIR/model.pt)")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from asymcl.training.export import export_run

    path = export_run(args.run, args.format, args.out)
    print(f"wrote {path}")
    return 0
