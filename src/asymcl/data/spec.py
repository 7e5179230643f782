"""What to load: the dataset registry, :class:`DataSpec` and the image suffixes, in one place.

This module sits under both :mod:`asymcl.data.sources` (which reads a source) and
:mod:`asymcl.data.splits` (which carves it into splits), so neither imports the other's types, and
the run config (``data.dataset``) and the ``asymcl data`` command build their choices and options
from it. Every fact about a dataset (its reader, whether it needs a root, its augmentation, its
download, its extra run outputs) is in its :class:`DatasetInfo`, so adding one, built in or from a
plugin (:func:`register_dataset`), is one entry and its reader.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asymcl import checks
from asymcl.data.imbalance import PROFILE_EXAMPLES, PROFILE_SYNTAX
from asymcl.errors import DataError

if TYPE_CHECKING:  # torch stays unimported: `asymcl data --help` builds its options from here
    import numpy as np

    from asymcl.data.datasets import ImageDataset

#: Image files every folder-based reader accepts: folder sources and ``asymcl predict`` alike.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: how to read it and every fact the layers above ask about it.

    ``loader``: the reader ``fn(spec: DataSpec) -> SourceData``, a callable or its import path
        ``"package.module:function"`` (imported on first use, so this table stays torch-free).
    ``needs_root``: whether ``data.root`` is required (a file or folder to read).
    ``augmentation``: the preset ``data.augment=auto`` picks (a name in
        :data:`asymcl.data.augment.PRESETS`); None: by channel count, ``dermoscopy`` for RGB
        images and ``grey28`` otherwise.
    ``labelled_by_root``: reports name its runs' data by the root's file or folder name too (a
        generic reader such as ``npz`` says little without it).
    ``download``: ``fn(root, *, base_url=None, timeout=60.0) -> [(file, status)]`` fetching the
        official files (``asymcl data download NAME``), a callable or an import path; None: none.
    ``outputs``: extra files a run writes for a test split,
        ``fn(*, split, official, ids, probs, classes) -> {file name: bytes}`` (``official``: the
        split is the source's own, not carved; ``probs`` (N, C) in ``classes`` order), a callable
        or an import path; None: none. ISIC 2018's challenge submission file is one.
    ``submission``: the dataset's own predictions file (a challenge's submission format),
        ``fn(image_ids, probs, classes) -> str`` (CSV text; ``probs`` (N, C) in ``classes`` order;
        a run whose classes it cannot score is a :class:`DataError`), which
        ``asymcl predict --format NAME`` writes; a callable or an import path; None: none.
    """

    name: str
    help: str
    loader: Callable[..., Any] | str
    needs_root: bool = True
    augmentation: str | None = None
    labelled_by_root: bool = False
    download: Callable[..., Any] | str | None = None
    outputs: Callable[..., Any] | str | None = None
    submission: Callable[..., Any] | str | None = None

    def load(self, spec: DataSpec) -> SourceData:
        """The source's pools, read by :attr:`loader`."""
        return _resolve(self.loader)(spec)

    def fetch(self, root: str | Path, **options: Any) -> list[tuple[str, str]]:
        """Download the dataset's files into ``root`` (``asymcl data download``)."""
        if self.download is None:
            raise DataError(f"dataset {self.name} has no download; downloadable: {', '.join(downloadable()) or 'none'}")
        return _resolve(self.download)(root, **options)

    def extra_outputs(self, **test_split: Any) -> dict[str, bytes]:
        """The extra files (name -> bytes) a run writes for one test split; see :attr:`outputs`."""
        return {} if self.outputs is None else dict(_resolve(self.outputs)(**test_split))

    def submission_csv(self, image_ids: Any, probs: Any, classes: Any) -> str:
        """The predictions in the dataset's own format (``asymcl predict --format``); see :attr:`submission`."""
        if self.submission is None:
            raise DataError(
                f"dataset {self.name} has no submission format; "
                f"those that have one: {', '.join(submission_formats()) or 'none'}"
            )
        return str(_resolve(self.submission)(image_ids, probs, classes))


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or the one a ``"package.module:function"`` import path names."""
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_DATASETS = (
    DatasetInfo(
        "digits",
        "scikit-learn's bundled 8x8 digits (offline, no root)",
        "asymcl.data.sources:load_digits",
        needs_root=False,
    ),
    DatasetInfo(
        "fashion-mnist",
        "Fashion-MNIST, the four official IDX files in a folder",
        "asymcl.data.sources:load_fashion_mnist",
        download="asymcl.data.download:download_fashion_mnist",
    ),
    DatasetInfo(
        "isic2018",
        "ISIC 2018 Task 3 (HAM10000) in the official layout",
        "asymcl.data.sources:load_isic2018",
        augmentation="dermoscopy",
        outputs="asymcl.data.isic:submission_outputs",
        submission="asymcl.data.isic:submission_csv",
    ),
    DatasetInfo(
        "npz",
        "an .npz file of images and labels (optionally split)",
        "asymcl.data.sources:load_npz",
        labelled_by_root=True,
    ),
    DatasetInfo(
        "folder",
        "a folder of class sub-folders (optionally under train/val/test)",
        "asymcl.data.sources:load_folder",
        labelled_by_root=True,
    ),
    DatasetInfo("csv", "a CSV file of image paths and labels", "asymcl.data.sources:load_csv", labelled_by_root=True),
)
#: name -> :class:`DatasetInfo`; iterating gives the names. Built-ins first, then registered ones.
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _DATASETS}
#: The names asymcl itself defines; a plugin may not take them.
BUILTIN_DATASETS = frozenset(DATASETS)


def downloadable() -> list[str]:
    """The datasets ``asymcl data download`` can fetch."""
    return [name for name, info in DATASETS.items() if info.download is not None]


#: The format ``asymcl predict`` writes by default (its own CSV); the datasets' submission formats
#: (:func:`submission_formats`) are the others.
DEFAULT_PREDICTIONS_FORMAT = "asymcl"


def submission_formats() -> list[str]:
    """The datasets whose own predictions format ``asymcl predict --format`` can write."""
    return [name for name, info in DATASETS.items() if info.submission is not None]


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to :data:`DATASETS`, the public extension point: one call declares its reader
    and every fact about it (see :class:`DatasetInfo`). ``data.dataset``, ``asymcl data summary``
    and ``download`` then offer it. Registering the same object again is a no-op; a name a built-in
    or another registered dataset has is a :class:`ConfigError`. Returns ``info``."""
    from asymcl.errors import ConfigError

    if not isinstance(info, DatasetInfo):
        raise ConfigError(f"register_dataset takes an asymcl.DatasetInfo, got {type(info).__name__}")
    if not info.name or not isinstance(info.name, str) or any(c in info.name for c in " /:,=\\"):
        raise ConfigError(f"dataset name {info.name!r}: use a non-empty name without spaces, '/', ':', ',' or '='")
    from asymcl.plugins import claim_name

    if not claim_name("dataset", info.name, info, DATASETS, BUILTIN_DATASETS):
        return info
    for name in ("loader", "download", "outputs", "submission"):
        value = getattr(info, name)
        if value is not None and not callable(value) and not (isinstance(value, str) and ":" in value):
            raise ConfigError(
                f"dataset {info.name}: {name} must be a callable or 'package.module:function', got {value!r}"
            )
    if info.augmentation is not None:
        from asymcl.data.augment import PRESETS

        if info.augmentation not in PRESETS:
            raise ConfigError(
                f"dataset {info.name}: augmentation {info.augmentation!r} is not one of {', '.join(PRESETS)}"
            )
    DATASETS[info.name] = info
    return info


def data_field(
    default: Any,
    check: Callable[[Any], Any],
    help: str,
    *,
    cli: bool = True,
    metavar: str | None = None,
    type: Any = None,
    required: bool = False,
) -> Any:
    """A data field, declared once for :class:`DataSpec` and the run config's ``data`` section:
    its default, ``check(value) -> normalised value`` (ValueError saying what is allowed; see
    :mod:`asymcl.checks`) and help text, and (``cli``) how ``asymcl data summary`` offers it."""
    metadata: dict[str, Any] = {"check": check, "help": help}
    if cli:
        metadata["cli"] = {"metavar": metavar, "type": type, "required": required}
    return field(default=default, metadata=metadata)


def _dataset(value: Any) -> str:
    """A name in :data:`DATASETS` (read at check time: a plugin's dataset is known once registered)."""
    if not isinstance(value, str) or value not in DATASETS:
        raise ValueError(f"must be one of {', '.join(DATASETS)} (a plugin's dataset: load it with --plugin)")
    return value


def _imbalance(value: Any) -> str | None:
    """KIND:RHO or KIND:RHO:NMAX, checked by :func:`asymcl.data.imbalance.parse_imbalance` (one
    grammar, one place: the messages quote its :data:`~asymcl.data.imbalance.PROFILE_SYNTAX`)."""
    from asymcl.data.imbalance import parse_imbalance

    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be null or {PROFILE_SYNTAX} (e.g. {PROFILE_EXAMPLES[0]})")
    try:
        parse_imbalance(value)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    return value


def _classes(value: Any) -> list[int | str] | None:
    """Null, or a non-empty list of class ids (ints >= 0) and names (strings), no repeats.

    ``"0,6"`` (the command line's spelling) is split at the commas, and a part that is a number is an id;
    in a list, a string is a name or, where the source has no class of that name, an id
    (:func:`asymcl.data.splits.resolve_classes` decides, as it knows the names).
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = [
            int(part) if part.lstrip("-").isdigit() else part for part in (p.strip() for p in value.split(",")) if part
        ]
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(
            (isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0)
            or (isinstance(v, str) and v.strip())
            for v in value
        )
    ):
        raise ValueError("must be a non-empty list of class ids >= 0 or class names, e.g. [0, 6] or 0,6")
    value = [v.strip() if isinstance(v, str) else int(v) for v in value]
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a class")
    return value


def _image_size(value: Any) -> int | list[int] | None:
    """Null (native size), a side >= 4 (square), or ``[height, width]``; a pair is written as a list
    (what YAML holds)."""
    side = checks.integer(4)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError("must be null, a side >= 4 or [height, width]")
        try:
            return [side(v) for v in value]
        except ValueError:
            raise ValueError("must be null, a side >= 4 or [height, width] of sides >= 4") from None
    try:
        return side(value)
    except ValueError:
        raise ValueError("must be null, a side >= 4 or [height, width] of sides >= 4") from None


_FRACTION = checks.number(0, maximum=1)


@dataclass(frozen=True)
class DataFields:
    """The fields what-to-load has wherever it is given: :class:`DataSpec` (the data layer) and the
    run config's ``data`` section (:class:`asymcl.training.config.DataConfig`) are both these
    fields, with one default, one check and one help text each (:func:`data_field`).

    dataset: a name in :data:`DATASETS`.
    root: the folder (fashion-mnist, isic2018, folder), the file (npz, csv); unused for digits.
    imbalance: ``None`` or a profile ``KIND:RHO[:NMAX]`` of
        :data:`asymcl.data.imbalance.PROFILE_KINDS` (exp, step, binary, cap; see that module).
    classes: class ids (ints) or class names to keep, in the order that defines the profile: the
        first is the majority. ``None`` keeps all in the source's order.
    val_fraction: share of the (imbalanced) training pool carved out for validation when the
        source has no official validation set; 0 carves none (then the source or
        ``val_per_class`` must give one).
    test_fraction: share of the pool carved out for testing when the source has no test set; 0
        carves none (then the source must have one).
    val_per_class: ``None``, or a balanced validation set of this many images per class, held out
        of the training pool before the imbalance profile is applied (replaces ``val_fraction``).
    csv_path_column, csv_label_column: column names of a CSV source (found by name otherwise).
    image_size: ``None`` (native size), an int (square side) or ``[height, width]`` to resize to.
    """

    dataset: str = data_field("digits", _dataset, "data source", required=True)
    root: str | None = data_field(
        None,
        checks.optional_str,
        "dataset folder (fashion-mnist, isic2018, folder) or file (npz, csv); not needed for digits",
    )
    imbalance: str | None = data_field(
        None,
        _imbalance,
        f"training-set imbalance profile: {PROFILE_SYNTAX} (e.g. {', '.join(PROFILE_EXAMPLES)})",
        metavar="PROFILE",
    )
    classes: list[int | str] | None = data_field(
        None, _classes, "class ids or names to keep, majority first (e.g. [0, 6] or 0,6)", metavar="IDS"
    )
    val_fraction: float = data_field(
        0.2,
        _FRACTION,
        "validation share of the training pool when the source has no validation split (0: none; then val_per_class)",
        type=float,
    )
    test_fraction: float = data_field(
        0.25, _FRACTION, "test share carved from the pool when the source has no test split", type=float
    )
    val_per_class: int | None = data_field(
        None,
        checks.integer(1, optional=True),
        "balanced validation: N images per class held out before the imbalance profile (null: val_fraction)",
        type=int,
        metavar="N",
    )
    csv_path_column: str | None = data_field(
        None,
        checks.optional_str,
        "image-path column of a csv source (null: the first of path, image, file, filename, ...)",
        metavar="NAME",
    )
    csv_label_column: str | None = data_field(
        None,
        checks.optional_str,
        "label column of a csv source (null: the first of label, class, target, y, category)",
        metavar="NAME",
    )
    image_size: int | list[int] | None = data_field(
        None, _image_size, "resize images to this side, or [height, width] (null: native)", type=int
    )

    def source_problem(self, prefix: str = "", root_must_exist: bool = True) -> str | None:
        """What is wrong with these fields together (None: nothing), keys written with ``prefix``
        (``"data."`` in the run config): a dataset that needs a root without one or with one that
        does not exist, a root given to a dataset that reads none, a binary profile on other than
        two classes. The one set of cross-field rules, for :meth:`DataSpec.validate` and the run
        config alike. ``root_must_exist=False``: a root that is not here is no problem (a finished
        run's config, read where its data is not)."""
        info = DATASETS[self.dataset]
        if info.needs_root and self.root in (None, ""):
            return f"{prefix}dataset={self.dataset} needs a root: set {prefix}root to the folder or file to read"
        if root_must_exist and info.needs_root and not Path(str(self.root)).expanduser().exists():
            return f"{prefix}root {self.root} does not exist"
        if not info.needs_root and self.root not in (None, ""):
            # A root given with digits is almost surely a forgotten dataset: say so, do not ignore it.
            return (
                f"{prefix}dataset={self.dataset} reads no root ({info.help}); got {prefix}root={self.root}: drop "
                f"it, or name the dataset it holds "
                f"({', '.join(d for d, other in DATASETS.items() if other.needs_root)})"
            )
        if (
            self.imbalance
            and self.imbalance.startswith("binary:")
            and self.classes is not None
            and len(self.classes) != 2
        ):
            return f"{prefix}imbalance binary:* needs exactly two {prefix}classes, got {self.classes}"
        return None


def checked_fields(cls: type, values: dict[str, Any], error: type[Exception], prefix: str = "") -> dict[str, Any]:
    """``values`` (field name -> value) normalised by the fields' own checks; the first that fails
    raises ``error("<prefix><name> <what is allowed>; got <value> (<help>)")``, the run config's
    wording."""
    declared = {f.name: f for f in fields(cls)}
    out = dict(values)
    for name, value in values.items():
        spec = declared[name]
        if "check" not in spec.metadata:
            continue
        try:
            out[name] = spec.metadata["check"](value)
        except ValueError as exc:
            raise error(f"{prefix}{name} {exc}; got {value!r} ({spec.metadata['help']})") from None
    return out


@dataclass(frozen=True)
class DataSpec(DataFields):
    """What to load (:class:`DataFields`) and the seed that fixes every split. Every field has a
    default; ``DataSpec()`` is the offline digits set. Values are checked and normalised when the
    spec is made (``classes="0,6"`` becomes ``[0, 6]``; a bad value is a :class:`DataError`), and
    :meth:`validate` checks the fields together.

    seed: fixes every split and subset.
    decoded_cache: keep decoded JPEGs under ``~/.cache/asymcl/decoded`` (``$ASYMCL_CACHE_DIR``) for
        ``load_all`` (the decoded-image cache; the run config's ``data.cache`` is the feature cache
        of a frozen encoder, :mod:`asymcl.data.feature_cache`).
    """

    seed: int = data_field(0, checks.integer(0), "fixes every split and subset", type=int)
    decoded_cache: bool = data_field(True, checks.boolean, "keep decoded images on disk for load_all", cli=False)

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in checked_fields(type(self), values, DataError).items():
            object.__setattr__(self, name, value)

    def validate(self) -> None:
        """The cross-field rules (:meth:`DataFields.source_problem`); a :class:`DataError`."""
        problem = self.source_problem()
        if problem is not None:
            raise DataError(problem)


@dataclass
class SourceData:
    """What a source loader returns, before classes, imbalance and carving are applied.

    pools: ``train`` always; ``val`` and ``test`` where the source has official ones.
    groups: per-pool group ids (e.g. lesion ids) aligned with the pool, where known.
    """

    classes: list[str]
    # Mapping: a loader's dict of one dataset class (dict[str, FileImageDataset]) is one of these too
    pools: Mapping[str, ImageDataset]
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
