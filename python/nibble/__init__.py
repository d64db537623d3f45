"""nibble from Python: run models, calibrate, quantize and evaluate, with numpy arrays.

    import numpy as np
    import nibble

    model = nibble.load("models/fmnist_resnet.onnx")           # an ONNX file or a model directory
    logits, = model.run(np.random.rand(8, 1, 28, 28).astype(np.float32))
    model.inputs                                              # [('input', 'f32', [None, 1, 28, 28])]

    table = nibble.calibrate("models/fmnist_resnet.onnx", images, method="percentile:99.999")
    nibble.quantize("models/fmnist_resnet.onnx", table, "int8.nbl", precision="int8")
    nibble.evaluate("int8.nbl", images, labels)               # {'top1': ..., 'correct': ..., 'total': ...}

Data for calibrate, quantize(gptq=True) and evaluate is a numpy array of inputs (N x ...), an
iterable of batches, or a reader in ONNX Runtime's CalibrationDataReader style: an object whose
get_next() returns a batch (an array, or a dict from the input name to an array) and then None.
Models run on the CPU (device="cpu", the vectorized kernels; backend="ref" for the reference
ones) or on an NVIDIA GPU (device="cuda", integer models). Errors raise nibble.Error with the
same one-line message as the command line. The engines release the GIL while they run.
"""

import numpy as np

from ._nibble import CalibTable, Error, Model, __version__, cpu_threads, read_calib, set_cpu_threads  # noqa: F401
from . import _nibble

__all__ = ["load", "calibrate", "quantize", "evaluate", "CalibrationDataReader", "Model", "CalibTable", "Error",
           "read_calib", "set_cpu_threads", "cpu_threads", "__version__"]


class CalibrationDataReader:
    """The reader protocol (as ONNX Runtime's quantize_static takes it): get_next() returns the
    next batch, an array or a dict {input name: array}, and None when the data is exhausted.
    rewind(), where a reader has it, starts the data again (calibration passes over it twice);
    without it the batches of the first pass are kept in memory for the second."""

    def get_next(self):
        raise NotImplementedError

    def rewind(self):
        raise NotImplementedError


def load(path, device="cpu", *, backend="cpu", int8_storage=False, max_batch=64, kernels="auto"):
    """A model ready to run: an ONNX file (FP32, or QDQ) or a model directory (nibble quantize's
    output, the seed's INT4 ResNet-50). device "cuda" runs integer models on GPU 0 (max_batch
    images per submission; int8_storage and kernels as `nibble bench` takes them)."""
    return Model(str(path), device, backend, int8_storage, int(max_batch), kernels)


def _array_of(batch, what):
    if isinstance(batch, dict):
        if len(batch) != 1:
            raise Error(f"{what}: a batch for a model of one input holds one array, this one {len(batch)}")
        batch = next(iter(batch.values()))
    if not isinstance(batch, np.ndarray):
        raise Error(f"{what}: a batch must be a numpy array (or a dict of one), got {type(batch).__name__}")
    return batch


def _batches(data, batch_size, what):
    """The batches of `data` (an array split along its first axis, an iterable, or a reader)."""
    if isinstance(data, np.ndarray):
        if data.ndim == 0 or len(data) == 0:
            raise Error(f"{what}: no inputs")
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
        return
    if hasattr(data, "get_next"):
        while True:
            b = data.get_next()
            if b is None:
                return
            yield _array_of(b, what)
        return
    try:
        it = iter(data)
    except TypeError:
        raise Error(f"{what}: data must be a numpy array, an iterable of batches or a reader with get_next()") from None
    for b in it:
        yield _array_of(b, what)


def _two_passes(data, batch_size, what):
    """A function giving the batches again for each pass: the array itself, a rewound reader, or
    the batches kept from the first pass."""
    if isinstance(data, np.ndarray):
        return lambda: _batches(data, batch_size, what)
    state = {"first": True}
    if hasattr(data, "get_next") and callable(getattr(data, "rewind", None)):
        def again():
            if not state["first"]:
                data.rewind()
            state["first"] = False
            return _batches(data, batch_size, what)
        return again
    kept = []

    def again_kept():
        if state["first"]:
            state["first"] = False
            return _keeping(_batches(data, batch_size, what), kept)
        return iter(kept)
    return again_kept


def _keeping(source, kept):
    for b in source:
        kept.append(b)
        yield b


def calibrate(model, data, method="max", precision="int8", *, batch_size=50, output=None):
    """The calibration table of an FP32 ONNX model over `data`: the range of every activation,
    chosen by `method` (max, percentile:P, entropy or mse) for the activation bits of
    `precision`. Written to `output` too when given (the text format `nibble quantize` reads)."""
    model = str(model)
    what = f"{model}: calibration data"
    cal = _nibble.Calibrator(model)
    passes = _two_passes(data, batch_size, what)
    seen = 0
    for b in passes():
        cal.observe_ranges(b)
        seen += len(b)
    if seen == 0:
        raise Error(f"{what}: no inputs")
    if method != "max":
        cal.start_histograms()
        for b in passes():
            cal.observe_histograms(b)
    table = cal.table(method, precision, [f"nibble calibration table (Python API), {seen} samples"])
    if output is not None:
        table.write(str(output))
    return table


def quantize(model, calib, output, precision="int8", *, gptq=False, dpq=False, group_size=32, gar=True, data=None,
             batch_size=50, layer_precision=None, exclude=None, all_layers=False, threads=0):
    """Quantizes an FP32 ONNX model with a calibration table (a CalibTable or a .calib path; none
    for a QDQ model) and writes the model directory `output` (which must not exist). With
    gptq=True the weights are rounded with GPTQ, its Hessians measured on `data`; dpq=True rounds
    the w4a8-fp8 layers by Dual Precision Quantization (groups of `group_size` inputs, gar: the
    group-aware column order) and the integer ones by GPTQ. Returns the per-layer report: dicts
    of layer, onnx_node, op, precision and note."""
    model = str(model)
    if isinstance(calib, (str, bytes)) or hasattr(calib, "__fspath__"):
        calib = str(calib)
    hessians = None
    if dpq and precision != "w4a8-fp8" and "w4a8-fp8" not in dict(layer_precision or {}).values():
        raise Error(f"{model}: dpq=True rounds w4a8-fp8 layers: give precision='w4a8-fp8'")
    if gptq or dpq:
        if data is None:
            raise Error(f"{model}: {'dpq' if dpq else 'gptq'}=True needs data to measure the Hessians on")
        hessians = _nibble.Hessians(model, calib if dpq else None)
        for b in _batches(data, batch_size, f"{model}: GPTQ data"):
            hessians.observe(b)
    return _nibble.quantize(model, calib, str(output), precision, dict(layer_precision or {}), list(exclude or []),
                            bool(all_layers), hessians, int(threads), bool(dpq), int(group_size), bool(gar))


def evaluate(model, images, labels, *, batch_size=100, device="cpu"):
    """Top-1 accuracy of a classifier (a loaded Model or a path) on `images` (an array or batches
    in any of calibrate's forms) against integer `labels`: the argmax of its first output."""
    m = model if isinstance(model, Model) else load(model, device)
    labels = np.asarray(labels).reshape(-1)
    correct = total = 0
    for b in _batches(images, batch_size, f"{m.path}: evaluation data"):
        scores = m.run(b)[0]
        pred = scores.reshape(len(b), -1).argmax(axis=1)
        if total + len(b) > len(labels):
            raise Error(f"{m.path}: {len(labels)} labels for more images")
        correct += int((pred == labels[total:total + len(b)]).sum())
        total += len(b)
    if total != len(labels):
        raise Error(f"{m.path}: {len(labels)} labels for {total} images")
    return {"top1": correct / total if total else 0.0, "correct": correct, "total": total}
