"""The dataset registry (asymcl.data.spec) is the one list of datasets and image suffixes."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from PIL import Image

from asymcl.cli import build_parser
from asymcl.data import sources
from asymcl.data.spec import DATASETS, IMAGE_SUFFIXES, DataSpec
from asymcl.training.config import SCHEMA


def test_every_dataset_has_its_loader_and_the_config_offers_exactly_these():
    from asymcl.data.spec import _resolve

    for info in DATASETS.values():
        assert _resolve(info.loader).__module__ == sources.__name__  # the built-ins' readers live there
        for hook in (info.download, info.outputs):
            assert hook is None or callable(_resolve(hook))
    for name in DATASETS:
        assert SCHEMA["data.dataset"][1](name) == name


def test_data_summary_offers_every_spec_field_with_metadata():
    summary = (
        build_parser()._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices["summary"]
    )
    options = {action.dest: action for action in summary._actions}
    for spec_field in fields(DataSpec):
        assert (spec_field.name in options) == ("cli" in spec_field.metadata), spec_field.name
    assert list(options["dataset"].choices) == list(DATASETS)


def test_predict_reads_every_suffix_a_folder_source_trains_on(tmp_path):
    from asymcl.training.predict import find_images

    for index, suffix in enumerate(IMAGE_SUFFIXES):
        Image.fromarray(np.full((4, 4), index * 10, np.uint8)).save(
            tmp_path / f"im{index}{suffix}",
            format={".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".pgm": "PPM", ".ppm": "PPM"}.get(
                suffix
            ),
        )
    assert sorted(p.suffix for p in find_images(tmp_path)) == sorted(IMAGE_SUFFIXES)
