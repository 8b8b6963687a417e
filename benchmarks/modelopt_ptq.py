"""NVIDIA Model Optimizer's ONNX PTQ (INT8 Q/DQ for TensorRT) on one FP32 ONNX, run in a
Python that has `nvidia-modelopt[onnx]` (its pins, onnx 1.21 and onnxruntime-gpu 1.24,
conflict with edgeas's onnxruntime>=1.32, so benchmarks/precision.py calls this script in
a separate virtual environment: --modelopt-python).

    python benchmarks/modelopt_ptq.py --onnx model.onnx --calib calib.npy -o out.onnx
        [--method entropy|max] [--high-precision fp32|fp16] [--exclude NODE ...]

Calibration on the CPU execution provider only (no GPU here); the tensors in --calib are
the preprocessed calibration images edgeas calibrate uses (N, 3, H, W) float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--method", default="entropy")
    p.add_argument("--high-precision", default="fp32")
    p.add_argument("--exclude", nargs="*", default=[])
    a = p.parse_args()
    import modelopt
    from modelopt.onnx.quantization import quantize

    data = np.load(a.calib)
    t0 = time.perf_counter()
    quantize(a.onnx, quantize_mode="int8", calibration_data=data,
             calibration_method=a.method, calibration_eps=["cpu"],
             high_precision_dtype=a.high_precision, nodes_to_exclude=a.exclude or None,
             output_path=a.output, log_level="WARNING")
    json.dump({"modelopt": modelopt.__version__, "seconds": round(time.perf_counter() - t0, 1),
               "method": a.method, "high_precision": a.high_precision}, sys.stdout)


if __name__ == "__main__":
    main()
