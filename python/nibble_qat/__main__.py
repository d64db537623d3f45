"""python3 -m nibble_qat finetune MODEL.onnx --calib X.calib --precision int4 -o OUT/"""

import argparse
import os
import sys

from . import calib as calib_io
from . import data as data_io
from . import graph, onnx_io, train
from . import sparsity as sparsity_io

EPILOG = """\
The output directory gets model.onnx (the fine-tuned FP32 model: same graph, trained weights,
BatchNormalization scale and bias) and model.calib (the calibration table with the trained
ranges), which go straight into nibble:

  nibble quantize OUT/model.onnx --calib OUT/model.calib --precision P -o OUT/model.nbl

Use the same --precision (and --all-layers / --layer-precision / --shortcut-sums) there, and no --gptq: the
fake-quantized model rounds weights to the nearest level, as plain `nibble quantize` does.
A checkpoint (checkpoint.pt) is written after every epoch; --resume continues from it.

2:4 sparsity (NVIDIA's workflow for sparse INT8): prune, fine-tune the sparse model in FP32,
then quantize it after training (PTQ) or fine-tune it with quantization (QAT); --sparsity 2:4
keeps the pruned zeros through every step, and quantize records the pattern:

  nibble prune model.onnx --pattern 2:4 -o pruned.onnx
  python3 -m nibble_qat finetune pruned.onnx --precision float --sparsity 2:4 -o fp32/
  nibble calibrate fp32/model.onnx --method percentile:99.999 --precision int8 -o fp32.calib
  nibble quantize fp32/model.onnx --calib fp32.calib --precision int8 -o ptq.nbl             # PTQ
  python3 -m nibble_qat finetune fp32/model.onnx --calib fp32.calib --precision int8 --sparsity 2:4 -o qat/
  nibble quantize qat/model.onnx --calib qat/model.calib --precision int8 -o qat.nbl           # QAT
"""


def _floats(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number or a comma-separated list of them") from None


def _layer_precision(text):
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, p = item.rpartition(":")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"'{item}' is not NAME:PRECISION")
        out[name] = p
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m nibble_qat",
                                 description="Quantization-aware fine-tuning for nibble's integer models.")
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("finetune", help="fine-tune an FP32 ONNX model with fake quantization (STE)",
                       description="Fine-tunes an FP32 ONNX model with the engine's own quantization "
                                   "(straight-through estimator), starting from the ranges of a nibble "
                                   "calibration table.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("model", help="FP32 ONNX model (the one the table was calibrated on)")
    f.add_argument("--calib",
                   help="calibration table from `nibble calibrate` (the seed's recipe: --method percentile:99.999); "
                        "not needed with --precision float")
    f.add_argument("--precision", default="int4", choices=graph.PRECISIONS + ("float",),
                   help="integer precision (default int4), or float: fine-tune the FP32 model itself (with "
                        "--sparsity, the sparse FP32 step), writing no calibration table")
    f.add_argument("--sparsity", choices=sparsity_io.PATTERNS,
                   help="keep the zeros of the layers that are 2:4 sparse along their input channels (a model "
                        "pruned by `nibble prune --pattern 2:4`) through every step")
    f.add_argument("--all-layers", action="store_true",
                   help="quantize the first and last layers at --precision too (default: 8 bits, as nibble quantize)")
    f.add_argument("--shortcut-sums", action="store_true",
                   help="a conv read only by a later conv's residual Add hands over its 32-bit sums instead of an "
                        "8-bit value (as nibble quantize --shortcut-sums; quantize the result with it too)")
    f.add_argument("--layer-precision", type=_layer_precision, default={},
                   help="NAME:PRECISION,... per layer, as nibble quantize takes it")
    f.add_argument("--learn-ranges", action="store_true",
                   help="learn each activation's clipping threshold (LSQ) instead of keeping the calibrated one")
    f.add_argument("--range-lr", type=float, default=None, help="learning rate of the thresholds (default: --lr)")
    f.add_argument("--distill", type=float, default=0.0,
                   help="weight W in [0, 1] of distillation from the FP32 model: the loss is (1 - W) * "
                        "cross-entropy + W * KL(FP32 || fake-quantized) (default 0: cross-entropy only)")
    f.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    f.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    f.add_argument("--lr", type=float, default=0.005,
                   help="peak learning rate, cosine decay (default 0.005; lower it, e.g. to 0.0025, for a deep "
                        "model whose test accuracy after the first epoch stays far below FP32)")
    f.add_argument("--weight-decay", type=float, default=5e-4, help="on weights only (default 5e-4)")
    f.add_argument("--data", default="fashion-mnist",
                   help="training data: fashion-mnist, or a directory of images with one subfolder per class "
                        "(resized and cropped to the model's input, normalized by --mean and --std as nibble "
                        "calibrate --data DIR does)")
    f.add_argument("--test-data", default="",
                   help="with --data DIR: the test images, in the same class subfolders (default: every tenth "
                        "image of each class of --data, held out)")
    f.add_argument("--resize", type=int, default=0,
                   help="with --data DIR: resize each image's shorter side to N pixels, then crop the centre "
                        "(ImageNet: 256 for 224; 0: the shorter side becomes the input's size)")
    f.add_argument("--mean", type=_floats, default=[0.0],
                   help="with --data DIR: subtract after scaling pixels to [0, 1]; one value or one per channel")
    f.add_argument("--std", type=_floats, default=[1.0], help="with --data DIR: divide by, after the mean")
    f.add_argument("--data-dir", default=data_io.DEFAULT_DIR, help="directory of Fashion-MNIST's IDX files")
    f.add_argument("--limit-train", type=int, default=0, help="use only the first N training images")
    f.add_argument("--limit-test", type=int, default=0, help="evaluate on the first N test images only")
    f.add_argument("--max-steps", type=int, default=0, help="stop after N steps in all (0: run every epoch)")
    f.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    f.add_argument("--step-mode", choices=train.STEP_MODES, default="auto",
                   help="how training steps run: eager; compiled (the quantization steps after each "
                        "convolution fused by torch.compile); graphed (compiled, and each step replayed as "
                        "one CUDA graph: about 5x faster than eager on ResNet-50). compiled and graphed need "
                        "CUDA and PyTorch 2. Default auto: graphed where they are there, else eager "
                        "(docs/qat.md, \"Training speed\")")
    f.add_argument("--eager-teacher", action="store_true",
                   help="with --distill in step mode graphed, run the FP32 teacher's forward pass eagerly "
                        "(by default it is replayed as a CUDA graph there; same logits either way)")
    f.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (0: its default)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    f.add_argument("-o", "--output", required=True, help="output directory")
    args = ap.parse_args(argv)

    try:
        return _finetune(args)
    except (onnx_io.OnnxError, calib_io.CalibError, data_io.DataError, graph.UnsupportedModel, FileExistsError,
            ValueError, RuntimeError, OSError) as e:
        print(f"nibble_qat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nibble_qat: interrupted; the last finished epoch is in the checkpoint (--resume continues)",
              file=sys.stderr)
        return 130


def _finetune(args):
    import torch

    folder = args.data not in ("fashion-mnist", "fashion-mnist:train")
    if folder and not os.path.isdir(args.data):
        raise ValueError(f"--data {args.data}: neither fashion-mnist nor a directory of class subfolders")
    if not folder and (args.test_data or args.resize or args.mean != [0.0] or args.std != [1.0]):
        raise ValueError("--test-data, --resize, --mean and --std go with --data DIR (an image folder)")
    for name in ("epochs", "batch_size", "limit_train", "limit_test", "max_steps", "threads"):
        v = getattr(args, name)
        if v < 0 or (name in ("epochs", "batch_size") and v == 0):
            raise ValueError(f"--{name.replace('_', '-')} must be {'positive' if name in ('epochs', 'batch_size') else 'non-negative'}, got {v}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_file = onnx_io.load(args.model)
    if args.calib:
        table = calib_io.read(args.calib)
    elif args.precision == "float":
        table = calib_io.CalibTable("(no table)")
    else:
        raise ValueError(f"--calib is required for --precision {args.precision} (only float fine-tunes without one)")
    qat = graph.QatModel(model_file, table, args.precision, first_last_8bit=not args.all_layers,
                         layer_precision=args.layer_precision, learn_ranges=args.learn_ranges,
                         requantize_shortcuts=not args.shortcut_sums)
    data = None
    if folder:
        data = data_io.image_folders(args.data, args.test_data, qat.input_shape, args.resize, args.mean, args.std)
        with torch.no_grad():
            outputs = qat(torch.zeros((1,) + qat.input_shape)).shape[-1]
        if outputs != len(data.classes):
            raise ValueError(f"--data {args.data}: {len(data.classes)} classes, the model scores {outputs}")
        print(f"data: {args.data}: {len(data.train_y)} training and {len(data.test_y)} test images of "
              f"{len(data.classes)} classes")
    layers = qat.quantized_layers()
    counts = {}
    for _, _, p in layers:
        counts[p] = counts.get(p, 0) + 1
    print(f"model: {args.model} ({len(layers)} conv/linear layers: "
          f"{', '.join(f'{n} {p}' for p, n in sorted(counts.items()))}); table: {args.calib or 'none'}")
    ranges = ("none (float)" if args.precision == "float" else
              "learned (LSQ)" if args.learn_ranges else "fixed at the calibrated values")
    print(f"training: {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} (cosine), device {args.device}, "
          f"ranges {ranges}")
    settings = {"model": os.path.abspath(args.model), "calib": os.path.abspath(args.calib) if args.calib else None,
                "precision": args.precision, "all_layers": args.all_layers, "layer_precision": args.layer_precision,
                "learn_ranges": args.learn_ranges, "range_lr": args.range_lr, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
                "limit_train": args.limit_train, "max_steps": args.max_steps, "seed": args.seed,
                "distill": args.distill}
    if args.sparsity:
        settings["sparsity"] = args.sparsity
    if args.shortcut_sums:
        settings["shortcut_sums"] = True
    if folder:
        settings.update(data=os.path.abspath(args.data), test_data=os.path.abspath(args.test_data) if args.test_data else "",
                        resize=args.resize, mean=args.mean, std=args.std)
    teacher = graph.QatModel(model_file, table, "float") if args.distill > 0 else None
    train.finetune(qat, args.output, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   weight_decay=args.weight_decay, range_lr=args.range_lr, data_dir=args.data_dir,
                   device=args.device, seed=args.seed, limit_train=args.limit_train, limit_test=args.limit_test,
                   max_steps=args.max_steps, resume=args.resume, settings=settings,
                   teacher=teacher, distill=args.distill, step_mode=args.step_mode,
                   teacher_graph=not args.eager_teacher, sparsity=args.sparsity, data=data)
    flags = "" if not args.all_layers else " --all-layers"
    if args.shortcut_sums:
        flags += " --shortcut-sums"
    if args.layer_precision:
        flags += " --layer-precision " + ",".join(f"{k}:{v}" for k, v in args.layer_precision.items())
    out = args.output.rstrip("/")
    if args.precision == "float":
        print(f"wrote {out}/{train.MODEL}; next, calibrate it and quantize it, or fine-tune it with quantization:\n"
              f"  nibble calibrate {out}/{train.MODEL} --method percentile:99.999 -o {out}/model.calib")
        return 0
    print(f"wrote {out}/{train.MODEL} and {out}/{train.TABLE}; next:\n"
          f"  nibble quantize {out}/{train.MODEL} --calib {out}/{train.TABLE} --precision {args.precision}{flags} "
          f"-o {out}/model.nbl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
