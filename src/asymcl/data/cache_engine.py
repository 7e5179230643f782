"""Who runs the frozen part during feature-cache extraction on a CPU: torch, or ONNX Runtime.

Why our own runner: on CPUs the frozen EfficientNet-Lite passes in fp32 are the cache's whole cost,
and torch's eager kernels for their depthwise convolutions are slow on some processors. On an
AVX2-only AMD EPYC without native bf16, ONNX Runtime ran Lite0 at 224 px 3.8x and the ISIC pair
(Lite2 + Lite0 at 260 px, three taps) 4.5x faster than torch in the same process
(``benchmarks/bench_cache_engine.py``). Nothing else puts an exported copy of a torch module behind
a torch-shaped call, so this module does: it exports the frozen part once per process with torch's
TorchScript-based exporter (as ``asymcl export`` does) and runs the batches through an
``onnxruntime.InferenceSession``.

``data.cache_engine``:

* ``auto`` (default): ONNX Runtime for the fp32 passes on a CPU when ``onnxruntime`` imports and the
  frozen part exports; torch otherwise (GPUs, bf16 passes, a module the exporter refuses, which is
  said in one line). bf16 passes stay on torch: where a CPU has native bf16 that is what made them
  fast, and ONNX Runtime has no bf16 convolutions on CPUs.
* ``torch``: always torch.
* ``onnxruntime``: ONNX Runtime for every fp32 CPU pass, and a clear error where it cannot be.

The engine is not part of the cache key, as ``channels_last`` is not: the two agree to about 1e-5
on features of size 1-10 (the tests check 1e-4 relative), far below the float16 rounding of the stored
features (about 5e-4 relative): on the ISIC pair 99% of the stored values are bit-identical and the
rest differ in the last bit. A run from a cache one engine wrote is then as good as one from the
other's, but not bit-identical to it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from asymcl.errors import ConfigError, DataError

ENGINES = ("auto", "torch", "onnxruntime")
#: The exporter's opset: the one ``asymcl export`` writes (asymcl.training.export.ONNX_OPSET).
OPSET = 17

# One session per frozen module and thread count, for the life of the module: the export takes
# seconds (14 s for the ISIC pair) and one build asks for it once per split.
_SESSIONS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Callable[[Tensor], Tensor]]] = weakref.WeakKeyDictionary()


@contextmanager
def _native_output_silenced() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null: where an operator has no ONNX form, the exporter's C++
    side prints the whole traced graph before it raises, and the one line we log says it all."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    try:
        with open(os.devnull, "w") as null:
            for fd in (1, 2):
                os.dup2(null.fileno(), fd)
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _session(frozen: nn.Module, example: Tensor, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Between two batches the caller renders views on one thread; spinning workers would take
    # that core from it (and from a second sweep worker).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    # A file, not a buffer: the exporter's typed signature takes a path (and the file is read once).
    with tempfile.TemporaryDirectory(prefix="asymcl-onnx-") as folder:
        path = os.path.join(folder, "frozen.onnx")
        with torch.no_grad(), warnings.catch_warnings(), _native_output_silenced():
            # The TorchScript-based exporter warns about its own deprecation and about tracing
            # Python control flow (the backbone's fixed padding arithmetic): nothing a user can act on.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                frozen,
                (example,),
                path,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=["outputs"],
                dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
            )
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_runner(frozen: nn.Module, example: Tensor, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """``frozen`` (in eval mode) exported once and run by ONNX Runtime: a callable
    (B, C, H, W) float32 -> its output, float32, like ``frozen(batch)``. ``example``: one real batch
    (its shape after the batch axis is the one the export fixes). Raises what the exporter or
    ONNX Runtime raise."""
    threads = int(threads or torch.get_num_threads())
    per_module = _SESSIONS.setdefault(frozen, {})
    key = (threads, tuple(example.shape[1:]))
    if key not in per_module:
        was_training = frozen.training
        frozen.eval()
        try:
            session = _session(frozen, example[:2].float().contiguous(), threads)
        finally:
            frozen.train(was_training)

        def run(batch: Tensor) -> Tensor:
            (out,) = session.run(None, {"images": batch.float().contiguous().numpy()})
            return torch.from_numpy(out)

        per_module[key] = run
    return per_module[key]


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"data.cache_engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError(
                "data.cache_engine=onnxruntime needs the onnxruntime package: pip install onnxruntime, "
                "or set data.cache_engine=auto"
            ) from None
    return engine


def fp32_runner(
    frozen: nn.Module, example: Tensor, engine: str, device: torch.device, log: Callable[[str], None]
) -> Callable[[Tensor], Tensor] | None:
    """What runs the fp32 passes of one extraction: an ONNX Runtime callable, or None for torch
    (see the module docstring for when). ``log``: where a fallback from ``auto`` to torch is said."""
    check_engine(engine)
    if engine == "torch" or device.type != "cpu":
        if engine == "onnxruntime":
            raise ConfigError(
                f"data.cache_engine=onnxruntime runs on the CPU only and this extraction runs on {device}; "
                "set data.cache_engine=auto"
            )
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        return onnx_runner(frozen, example)
    except Exception as exc:  # the exporter's and ONNX Runtime's errors share no base class
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if engine == "onnxruntime":
            raise DataError(
                f"feature cache: data.cache_engine=onnxruntime could not export the frozen part ({reason}); "
                "set data.cache_engine=torch"
            ) from None
        log(f"feature cache: the frozen part does not export to ONNX ({reason}); extracting with torch")
        return None
