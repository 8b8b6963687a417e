"""`edgeas doctor` on this machine (no GPU, no TensorRT) and on Jetson sample files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeas import doctor, probes

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with some top-level modules made unimportable, as on a machine without them.
BLOCKED_MAIN = textwrap.dedent(
    """
    import sys
    blocked = set(sys.argv[1].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["edgeas", *sys.argv[2:]]
    from edgeas.cli import main
    main()
    """
)


def run_doctor(*args: str, block: str = "", env: dict | None = None, cwd: Path | None = None):
    cmd = [sys.executable, "-c", BLOCKED_MAIN, block, "doctor", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=full_env, cwd=cwd or REPO
    )


def has(module: str) -> bool:
    return probes._has(module)


# ----------------------------------------------------------------------------- this machine
def test_plain_run_reports_every_component_and_exits_0():
    done = run_doctor()
    assert done.returncode == 0, done.stderr
    for label in ("edgeas", "torch", "TensorRT", "pycuda", "ONNX Runtime", "OpenCV", "GPU"):
        assert label in done.stdout
    assert "not a Jetson" in done.stdout  # this machine has no /etc/nv_tegra_release


def test_json_prints_only_json_with_the_facts():
    done = run_doctor("--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole of stdout, nothing else
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["check"] == {"for": None, "ok": True, "missing": [], "notes": []}
    assert report["jetson"] is None
    assert isinstance(report["events"]["free_mb"], int)
    if has("cv2"):
        import cv2

        assert report["opencv"]["version"] == cv2.__version__
        assert set(report["opencv"]) >= {"GStreamer", "FFmpeg", "V4L2"}
    if has("onnxruntime"):
        assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["extras"] is not None and "train" in report["extras"]


def test_json_stays_clean_when_a_probed_package_prints(tmp_path):
    # A stand-in `tensorrt` that writes to stdout from Python and straight to fd 1.
    (tmp_path / "tensorrt.py").write_text(
        "import os\nprint('hello from tensorrt')\nos.write(1, b'raw fd noise\\n')\n"
        "__version__ = '10.3.0.30'\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = run_doctor("--json", "--for", "build-engine", block="tensorrt_rtx,torch", env=env)
    report = json.loads(done.stdout)
    assert "hello from tensorrt" in done.stderr and "raw fd noise" in done.stderr
    assert report["tensorrt"] == {"version": "10.3.0.30", "build_path": "flags"}
    if report["gpu"] is None:  # TensorRT proper builds only on a GPU
        assert done.returncode == 1
        assert [m["what"] for m in report["check"]["missing"]] == ["an NVIDIA GPU"]


def test_build_engine_without_tensorrt_exits_1_naming_it():
    done = run_doctor("--for", "build-engine", block="tensorrt,tensorrt_rtx,torch")
    assert done.returncode == 1
    assert "missing for build-engine: tensorrt" in done.stdout
    assert "install: pip install tensorrt" in done.stdout
    js = run_doctor("--json", "--for", "build-engine", block="tensorrt,tensorrt_rtx,torch")
    missing = json.loads(js.stdout)["check"]["missing"]
    assert js.returncode == 1 and missing[0]["what"] == "tensorrt"


def test_build_engine_verdict_matches_what_is_installed_here():
    done = run_doctor("--json", "--for", "build-engine")
    report = json.loads(done.stdout)
    if has("tensorrt"):
        pytest.skip("TensorRT is installed here; the blocked-import test covers its absence")
    if has("tensorrt_rtx"):
        # TensorRT for RTX builds in CPU-only mode (deploy.md): a build path exists.
        assert done.returncode == 0 and report["tensorrt_rtx"]["build_path"] == "rtx"
        if report["gpu"] is None:
            assert any("CPU-only" in n for n in report["check"]["notes"])
    else:
        assert done.returncode == 1
        assert report["check"]["missing"][0]["what"] == "tensorrt"


@pytest.mark.skipif(not has("torch"), reason="torch is not installed here")
def test_train_exits_0_when_torch_imports():
    done = run_doctor("--json", "--for", "train")
    report = json.loads(done.stdout)
    assert done.returncode == 0, report["check"]
    assert report["torch"]["version"] and report["check"]["ok"]


def test_train_without_torch_exits_1_with_the_install_command():
    done = run_doctor("--json", "--for", "train", block="torch")
    report = json.loads(done.stdout)
    assert done.returncode == 1
    assert report["check"]["missing"][0]["what"] == "torch"
    assert report["check"]["missing"][0]["install"] == "pip install 'edgeas[train]'"


def station_file(tmp_path: Path, source: str, model: Path) -> Path:
    path = tmp_path / "station.yaml"
    events = tmp_path / "events"
    path.write_text(f"model: {model}\nsource: {source}\nevents:\n  dir: {events}\n")
    return path


@pytest.mark.skipif(not has("onnxruntime"), reason="onnxruntime is not installed here")
def test_stream_ready_for_an_onnx_model_from_a_file(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"placeholder: doctor checks the file exists, not its content")
    config = station_file(tmp_path, "file:///x.mp4", model)
    done = run_doctor("--for", "stream", "--config", str(config), block="torch")
    assert done.returncode == 0, done.stdout
    assert "ready for stream" in done.stdout


def test_stream_from_a_triton_server_needs_its_client_not_a_model_file(tmp_path):
    config = station_file(tmp_path, "file:///x.mp4", "triton://10.0.0.5:8001/edgeas")
    done = run_doctor("--json", "--for", "stream", "--config", str(config), block="torch")
    missing = {m["what"] for m in json.loads(done.stdout)["check"]["missing"]}
    assert not missing & {"the model file", "onnxruntime", "tensorrt"}
    assert ("tritonclient" in missing) == (not has("tritonclient"))


def test_stream_names_the_missing_model_and_camera_backend(tmp_path):
    config = station_file(tmp_path, "csi://0", tmp_path / "absent.engine")
    done = run_doctor("--json", "--for", "stream", "--config", str(config), block="torch")
    report = json.loads(done.stdout)
    missing = {m["what"] for m in report["check"]["missing"]}
    assert done.returncode == 1
    assert "the model file" in missing
    assert report["events"]["dir"] == str(tmp_path / "events")
    # csi:// goes through nvarguscamerasrc: OpenCV must have GStreamer.
    assert ("GStreamer in OpenCV" in missing) == (not report["opencv"]["GStreamer"])
    if report["cuda_layer"] is None:  # engines need pycuda or cuda-python beside TensorRT
        assert "pycuda or cuda-python" in missing
    elif report[report["cuda_layer"].replace("-", "_")].get("error"):  # no driver here
        assert "access to the GPU" in missing


def test_stream_names_the_integration_packages_the_station_file_needs(tmp_path):
    config = station_file(tmp_path, "file:///x.mp4", tmp_path / "model.onnx")
    config.write_text(config.read_text() + "mqtt: {url: 'mqtt://b/f'}\nmetrics: 9100\n")
    done = run_doctor("--json", "--for", "stream", "--config", str(config),
                      block="torch,paho,prometheus_client")
    missing = {m["what"]: m["install"] for m in json.loads(done.stdout)["check"]["missing"]}
    assert done.returncode == 1
    assert missing["paho-mqtt"] == missing["prometheus-client"] == "pip install 'edgeas[runtime]'"


def test_doctor_reports_which_cuda_layer_the_gpu_path_uses(tmp_path):
    """pycuda first; cuda-python (cuda.bindings) stands in where pycuda is missing; with
    neither, an engine station misses 'pycuda or cuda-python'."""
    report = json.loads(run_doctor("--json", block="pycuda").stdout)
    assert report["pycuda"]["version"] is None
    if has("cuda.bindings"):
        assert report["cuda_python"]["version"] and report["cuda_layer"] == "cuda-python"
    table = run_doctor(block="pycuda,cuda")
    assert "cuda-python" in table.stdout and "CUDA layer" in table.stdout
    assert "none (pip install pycuda, or cuda-python)" in table.stdout
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"placeholder")
    config = station_file(tmp_path, "file:///x.mp4", engine)
    done = run_doctor("--json", "--for", "stream", "--config", str(config),
                      block="pycuda,cuda,torch")
    missing = {m["what"]: m for m in json.loads(done.stdout)["check"]["missing"]}
    assert "pycuda or cuda-python" in missing
    assert "cuda-python" in missing["pycuda or cuda-python"]["install"]


def test_unreadable_station_file_is_a_config_error(tmp_path):
    bad = tmp_path / "station.yaml"
    bad.write_text("model: [unclosed\n")
    done = run_doctor("--for", "stream", "--config", str(bad))
    assert done.returncode == 2
    assert "cannot read station file" in done.stderr and "hint:" in done.stderr


def test_unknown_target_suggests_the_close_one():
    done = run_doctor("--for", "stream-it")
    assert done.returncode == 2 and "did you mean --for stream?" in done.stderr


def test_importing_doctor_loads_neither_torch_nor_tensorrt():
    code = (
        "import sys, edgeas.cli, edgeas.doctor; "
        "print(sorted(m for m in ('torch', 'tensorrt', 'tensorrt_rtx') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stderr


# ----------------------------------------------------------------------------- pure parsing
@pytest.mark.parametrize(
    ("module", "version", "path"),
    [
        ("tensorrt", "8.4.1.5", None),
        ("tensorrt", "8.5.2.2", "flags"),  # JetPack 5.1
        ("tensorrt", "10.3.0.30", "flags"),  # JetPack 6.1/6.2
        ("tensorrt", "11.4.1", "strongly-typed"),
        ("tensorrt_rtx", "1.7.1.116", "rtx"),
    ],
)
def test_build_path_follows_the_tensorrt_version(module, version, path):
    assert probes.build_path(module, version) == path
    fake = SimpleNamespace(__version__=version)
    assert probes.probe_tensorrt(lambda name: (fake, None), module)["build_path"] == path


JETSON_OPENCV = """General configuration for OpenCV 4.8.0 =====================================
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
      avcodec:                   YES (58.134.100)
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    YES (linux/videodev2.h)

  Parallel framework:            pthreads
"""


def test_video_io_reads_only_the_backends_of_the_section():
    io = probes.video_io(JETSON_OPENCV)
    assert io == {
        "DC1394": "NO",
        "FFMPEG": "YES",
        "GStreamer": "YES (1.20.3)",
        "v4l/v4l2": "YES (linux/videodev2.h)",
    }
    assert probes.video_io("no such section") == {}


# ----------------------------------------------------------------------------- Jetson samples
# /etc/nv_tegra_release first lines, device-tree model strings (NUL-terminated as in /proc)
# and `nvpmodel -q` outputs in the form these releases print them.
SAMPLES = {
    "orin-nano-jp6": dict(
        release="# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n",
        model="NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00",
        nvpmodel="NV Power Mode: MAXN_SUPER\n2\n",
        sysfs=["17000000.gpu", "13e00000.host1x"],
        dev=["nvhost-ctrl-gpu", "nvmap", "video0"],
        want=dict(l4t="36.4.3", jetpack="6.2", mode="MAXN_SUPER", mode_id=2, dla=0),
    ),
    "xavier-nx-jp5": dict(
        release="# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Aug  1 19:57:35 UTC 2023\n",
        model="NVIDIA Jetson Xavier NX Developer Kit\x00",
        nvpmodel="NV Power Mode: MODE_20W_6CORE\n8\n",
        sysfs=["15880000.nvdla0", "158c0000.nvdla1", "17000000.gv11b"],
        dev=["nvhost-nvdla0", "nvhost-nvdla1", "nvhost-ctrl-nvdla0", "nvhost-ctrl-nvdla1"],
        want=dict(l4t="35.4.1", jetpack="5.1.2", mode="MODE_20W_6CORE", mode_id=8, dla=2),
    ),
    "agx-thor-jp7": dict(
        release="# R38 (release), REVISION: 2.1, GCID: 41420474, BOARD: generic, EABI: aarch64, "
        "DATE: Thu Aug 21 22:10:12 UTC 2025\n",
        model="NVIDIA Jetson AGX Thor Developer Kit\x00",
        nvpmodel="NV Power Mode: MAXN\n0\n",
        sysfs=["a808a10000.gpu"],
        dev=["nvidia0", "nvidiactl"],
        want=dict(l4t="38.2.1", jetpack="7.0", mode="MAXN", mode_id=0, dla=0),
    ),
    # A JetPack 7 release newer than doctor's table (Orin support came with 7.2; its R39
    # numbering is inferred from NVIDIA's docs): the JetPack major still comes out right.
    "agx-orin-jp7": dict(
        release="# R39 (release), REVISION: 2.0, GCID: 00000000, BOARD: generic, EABI: aarch64, "
        "DATE: Mon Jun  1 00:00:00 UTC 2026\n",
        model="NVIDIA Jetson AGX Orin Developer Kit\x00",
        nvpmodel="NVPM WARN: Golden image context is already created\nNV Power Mode: 30W\n2\n",
        sysfs=["15880000.nvdla0", "158c0000.nvdla1"],
        dev=[],
        want=dict(l4t="39.2.0", jetpack="7.x", mode="30W", mode_id=2, dla=2),
    ),
}


def make_root(tmp_path: Path, sample: dict) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(sample["release"])
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(sample["model"].encode())
    for folder, names in (("sys/bus/platform/devices", sample["sysfs"]), ("dev", sample["dev"])):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).touch()
    return root


def absent(name: str):
    return None, "not installed"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_jetson_probes_from_sample_files(tmp_path, name):
    sample = SAMPLES[name]
    root = make_root(tmp_path, sample)
    calls = []

    def run(cmd):
        calls.append(list(cmd))
        return sample["nvpmodel"] if cmd[0] == "nvpmodel" else None

    report = probes.collect(root=root, run=run, load=absent, events_dir=tmp_path / "ev")
    j, want = report["jetson"], sample["want"]
    assert j["module"] == sample["model"].rstrip("\x00")
    assert (j["l4t"], j["jetpack"]) == (want["l4t"], want["jetpack"])
    assert j["power_mode"] == {"name": want["mode"], "id": want["mode_id"]}
    assert j["dla_cores"] == want["dla"]
    assert ["nvpmodel", "-q"] in calls
    # No nvidia-smi, torch or pycuda: the GPU is still known to exist, so a Jetson with
    # TensorRT is not told it lacks one, and the install hints are JetPack's.
    assert report["gpu"]["source"] == "jetson"
    missing = doctor.check("build-engine", report, None, False)
    assert missing[0]["what"] == "tensorrt" and "python3-libnvinfer" in missing[0]["install"]


def test_not_a_jetson_without_release_or_model(tmp_path):
    report = probes.collect(root=tmp_path, run=lambda cmd: None, load=absent)
    assert report["jetson"] is None and report["gpu"] is None


def test_jetson_without_nvpmodel_or_device_folders(tmp_path):
    sample = SAMPLES["orin-nano-jp6"]
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(sample["release"])
    j = probes.probe_jetson(root, lambda cmd: None)
    assert j["l4t"] == "36.4.3" and j["power_mode"] is None and j["dla_cores"] is None


def test_cli_reads_jetson_files_under_edgeas_doctor_root(tmp_path):
    sample = SAMPLES["xavier-nx-jp5"]
    root = make_root(tmp_path, sample)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvpmodel"  # a stand-in that prints what nvpmodel -q prints
    fake.write_text("#!/bin/sh\nprintf 'NV Power Mode: MODE_20W_6CORE\\n8\\n'\n")
    fake.chmod(0o755)
    env = {"EDGEAS_DOCTOR_ROOT": str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = run_doctor(
        "--json", "--for", "build-engine", block="tensorrt,tensorrt_rtx,torch", env=env
    )
    report = json.loads(done.stdout)
    assert report["jetson"] == {
        "module": "NVIDIA Jetson Xavier NX Developer Kit",
        "l4t": "35.4.1",
        "jetpack": "5.1.2",
        "power_mode": {"name": "MODE_20W_6CORE", "id": 8},
        "dla_cores": 2,
    }
    assert done.returncode == 1
    assert "jetson/install.sh" in report["check"]["missing"][0]["install"]
