"""edgeas.calibration imports with torch, TensorRT and even ONNX Runtime / onnx blocked:
they are imported inside the functions that use them, so the module, `edgeas calibrate
--help` and a clear error for a missing package work on a bare machine."""

from __future__ import annotations

from blocked_python import run_without

BLOCKED = ("torch", "torchvision", "tensorrt", "tensorrt_rtx", "pycuda", "onnxruntime", "onnx",
           "onnx_graphsurgeon")
MODULES = ("command", "evalset", "gate", "images", "mixed", "quantize", "ranges", "scoring",
           "sensitivity")
# the core modules calibration shares with export (and the runtime)
SHARED = ("calibcache", "calibimages", "onnxio", "ort")


def test_every_calibration_module_imports_with_the_heavy_packages_blocked():
    run = run_without(BLOCKED, f"""
        for mod in {MODULES!r}:
            __import__("edgeas.calibration." + mod)
        for mod in {SHARED!r}:
            __import__("edgeas." + mod)
        import edgeas.export.trt_calibrator  # shares edgeas.calibimages, stays torch-free
        loaded = [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]
        assert not loaded, loaded
        sys.argv = ["edgeas", "calibrate", "--help"]
        from edgeas.cli import main
        main()
    """)
    assert run.returncode == 0, run.stderr
    assert "--eval-data" in run.stdout and "--allow-drop" in run.stdout


def test_missing_onnx_runtime_is_a_one_line_error(tmp_path):
    run = run_without(("onnxruntime",), """
        from edgeas.calibration import quantize, ranges
        try:
            quantize.quantize(None, ranges.Ranges("minmax", {}, {}, {}, 0), "qdq")
        except Exception as exc:
            print(type(exc).__name__, exc.hint)
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("DependencyError") and "pip install" in run.stdout
