# Two entry points for a fresh machine (Python 3.11, no GPU): `make demo`, `make test`.
PYTHON ?= python3
DEMO ?= demo
DEMO_SERVE ?= 127.0.0.1:8080

# Debian packages the tests use: shell/unit linters, a browser for the live page, an
# RTSP server (GStreamer through Debian's own python3), ffprobe, an MQTT broker
# (mosquitto) and openssl (a throw-away CA for its TLS test). Installed only when
# running as root with apt (CI); elsewhere the tests that need them skip with a reason.
APT_PACKAGES = shellcheck systemd chromium ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
	fonts-dejavu-core mosquitto openssl

# The exact versions the tests passed with (`make lock` writes it): what `make install`,
# hence `make demo`, `make test` and CI, installs. pyproject.toml keeps ranges.
CONSTRAINTS = constraints.txt
EXTRAS = train,export,runtime,dev,triton
# The tests' Triton Inference Server (PyTriton's binary), in a venv of its own: its wheel
# requires numpy < 2. tests/triton_support.py finds it here.
TRITON_VENV ?= .venv-tritonserver

.PHONY: install upgrade lock system-packages demo test test-newest lint gpu-wheels gpu-check \
	triton-server

install:
	$(PYTHON) -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"

# The newest versions the pyproject's ranges allow, for a new lock: `make upgrade`, then
# `python3 -m pytest -q` (not `make test`: its install goes back to the lock), `make lock`.
upgrade:
	$(PYTHON) -m pip install --quiet --upgrade -e ".[$(EXTRAS)]"

# Pins what this environment holds of edgeas's dependency tree (not the rest of a `pip
# freeze`): run it where the tests have just passed, and commit the file.
lock:
	$(PYTHON) .ci/lock.py freeze --extras $(EXTRAS) > $(CONSTRAINTS).new \
		|| { rm -f $(CONSTRAINTS).new; exit 1; }
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$(APT_PACKAGES) >/dev/null; \
	else \
		echo "not root with apt: not installing $(APT_PACKAGES)"; \
	fi

# The main job on built-in data: generate the inspection set, train the demo-cpu preset
# (unias-edge at width 64, ~320 steps, with the nearest-neighbour decision head),
# evaluate it, export it to ONNX (FP32 + FP16), commission the station (refit the
# threshold on a camera clip of fresh normal parts: the frames a station sees are coded
# video, not PNGs, and score higher; benchmarks/EXPERIMENTS.md, "Issue 12"), calibrate INT8 on normal images with the accuracy gate, and stream a 1280x720
# line-camera video of the test images through the exported model on the CPU with the
# live page served, events logged and the result recorded; the stream's summary scores
# its OK/NG calls against the clip's list. Measured: benchmarks/results/station.md.
demo: install
	rm -rf $(DEMO)
	edgeas synth $(DEMO)/data --per-class 32 --seed 0
	edgeas train --config demo-cpu --data $(DEMO)/data --out $(DEMO)/run
	edgeas eval --checkpoint $(DEMO)/run/last.pt --data $(DEMO)/data --out $(DEMO)/eval
	edgeas export --checkpoint $(DEMO)/run/last.pt -o $(DEMO)/model.onnx --precision fp16
	edgeas synth $(DEMO)/commission --per-class 20 --seed 1
	edgeas synth-clip $(DEMO)/commission -o $(DEMO)/commission.mp4 --split train --hold 1 \
		--frame 1280x720
	edgeas threshold fit --model $(DEMO)/model.onnx --images $(DEMO)/commission.mp4
	edgeas calibrate --onnx $(DEMO)/model.onnx --images $(DEMO)/data \
		--eval-data $(DEMO)/data -o $(DEMO)/model.int8.onnx
	edgeas synth-clip $(DEMO)/data -o $(DEMO)/line.mp4 --frame 1280x720
	edgeas stream --model $(DEMO)/model.onnx --video $(DEMO)/line.mp4 --serve $(DEMO_SERVE) \
		--events $(DEMO)/events --record $(DEMO)/annotated.mp4

# tritonserver from nvidia-pytriton (~55 MB wheel), for the tests of `triton://` and
# `edgeas export-triton` against a real server (tests/test_triton_*.py).
triton-server:
	@[ -x $(TRITON_VENV)/bin/python ] || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet -r tests/triton-server-requirements.txt

test: system-packages install triton-server
	$(PYTHON) -m pytest -q

# The CLI's usage tests in a fresh venv with the newest core dependencies (no lock, no
# extras, no torch): the next release that breaks the CLI fails here, naming what moved.
test-newest:
	PYTHON=$(PYTHON) .ci/newest

lint:
	ruff check .

# ---- a lent GPU machine (benchmarks/gpu_check.py; results in benchmarks/results/gpu.md) ----
# `make gpu-wheels` here (with network): pycuda's sdist and the wheels it and the check
# need, for CPython 3.12 on x86-64, into $(GPU_WHEELS) (git-ignored, ~2 MB): carry that
# folder to the GPU machine. There, `make gpu-check` builds pycuda, installs edgeas without
# dependencies over the machine's PyTorch and runs every check in at most 8 minutes
# (GPU_CHECK_ARGS="--copy-to DIR" also copies the results out). `make gpu-check DRY=1`:
# the CPU dry run CI uses (tests/test_gpu_check.py), results in build/gpu-check-dry/.
GPU_WHEELS ?= .gpu-wheels
PYCUDA ?= pycuda==2026.1
GPU_CHECK_ARGS ?=
GPU_PLATFORMS = --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64

gpu-wheels:
	mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download --quiet --no-deps --no-binary pycuda -d $(GPU_WHEELS) $(PYCUDA)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --abi cp312 $(GPU_PLATFORMS) -d $(GPU_WHEELS) \
		-r benchmarks/gpu-wheels.txt
	ls -l $(GPU_WHEELS)

gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --wheels $(GPU_WHEELS) \
		$(if $(filter 1,$(DRY)),--dry) $(GPU_CHECK_ARGS)
