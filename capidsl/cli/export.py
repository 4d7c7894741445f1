"""`capidsl export RUN_DIR --format onnx|hf`: a trained run's model as an ONNX file (verified by onnxruntime) or a
Hugging Face model directory (read back and verified), written only once verified."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --run-dir of a `capidsl run` (a local path or gs://bucket/prefix)")
    p.add_argument("--format", default="onnx", choices=["onnx", "hf"],
                   help="onnx: one ONNX file; hf: a Hugging Face directory (config.json + model.safetensors "
                   "[+ tokenizer.json]) for transformers' from_pretrained (default onnx)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, metavar="N", help="the weights of checkpoint N (default: the run's final weights)")
    which.add_argument("--best", action="store_true", help="the weights of the best evaluation's checkpoint")
    p.add_argument("--out", metavar="PATH",
                   help="where to write it: for onnx a local path or gs://bucket/path/model.onnx "
                   "(default: the recipe's export.path, else RUN_DIR/export/model.onnx); "
                   "for hf a local directory (default RUN_DIR/export/hf)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the recipe's export.opset); onnx only")
    p.add_argument("--tolerance", type=float, metavar="T",
                   help="largest max-abs difference from JAX's logits accepted (default: the recipe's export.tolerance)")


def run(args: argparse.Namespace) -> int:
    from capidsl.errors import UsageError

    if args.step is not None and args.step < 0:
        raise UsageError("--step must be a checkpoint's step number")
    if args.tolerance is not None and not args.tolerance > 0:
        raise UsageError("--tolerance must be above 0")
    if args.opset is not None and args.opset < 13:
        raise UsageError("--opset must be 13 or more")
    if args.opset is not None and args.format != "onnx":
        raise UsageError("--opset applies to --format onnx only")
    from capidsl.export.run_export import describe_export, export_run

    account = export_run(args.run_dir, fmt=args.format, step=args.step, best=args.best, out=args.out,
                         opset=args.opset, tolerance=args.tolerance)
    print(describe_export(account))
    return 0
