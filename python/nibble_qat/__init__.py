"""nibble_qat: quantization-aware fine-tuning whose fake quantization is nibble's integer
arithmetic, so that the fine-tuned model runs on the engine with the same results.

    from nibble_qat import load, from_module
    model = load("model.onnx", "model.calib", precision="int4")   # a torch.nn.Module
    logits = model(x)            # f32, the engine's values (model.exact = True: bit for bit)
"""

import io

from . import arith, calib, data, graph, onnx_io, train
from .graph import QatModel, UnsupportedModel

__all__ = ["load", "from_module", "export_module", "QatModel", "UnsupportedModel", "finetune"]


def load(model_path, calib_path, precision="int4", **options):
    """A QatModel from an FP32 ONNX file and a nibble calibration table."""
    return QatModel(onnx_io.load(model_path), calib.read(calib_path), precision, **options)


def export_module(module, example_input, path=None, opset=13):
    """Exports a torch.nn.Module (eval mode, BatchNormalization kept) to ONNX for `nibble calibrate`
    and returns the bytes; writes them to `path` when given."""
    import torch

    buf = io.BytesIO()
    was_training = module.training
    module.eval()
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    try:
        torch.onnx.export(module, example_input, buf, input_names=["input"], output_names=["logits"],
                          opset_version=opset, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, **kwargs)
    finally:
        module.train(was_training)
    onnx_bytes = buf.getvalue()
    if path:
        train._atomic_bytes(onnx_bytes, path)
    return onnx_bytes


def from_module(module, example_input, calib_path, precision="int4", **options):
    """A QatModel from a torch.nn.Module: the module is exported to ONNX (export_module) and rebuilt.
    The table must come from `nibble calibrate` on that same export."""
    return QatModel(onnx_io.from_bytes(export_module(module, example_input)), calib.read(calib_path), precision,
                    **options)


def finetune(model, out_dir, **kwargs):
    """Fine-tunes a QatModel and writes OUT/model.onnx and OUT/model.calib (see train.finetune)."""
    return train.finetune(model, out_dir, **kwargs)
