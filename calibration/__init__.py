"""edgeas.calibration: INT8 models from normal images (`edgeas calibrate`).

images -> activation ranges (ranges) -> Q/DQ and QOperator models (quantize) and TensorRT
10's calibration cache (edgeas.calibcache) -> accuracy gate against FP32 (gate, evalset).
Needs numpy and OpenCV at import; onnx and ONNX Runtime only inside the functions that
use them; never torch. Imports the core only (never edgeas.export or edgeas.train).
"""
