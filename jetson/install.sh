#!/usr/bin/env bash
# Installs an edgeas inspection station on a Jetson (JetPack 5.1, 6 or 7).
#
#   sudo jetson/install.sh [--source PATH_OR_SPEC] [--prefix DIR] [--user NAME] [--no-service]
#
# Safe to run again: every step checks what is already there. It installs the
# runtime only (no torch): engines are built on this device with
# `edgeas build-engine`, from an ONNX file exported on a desktop.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=jetson/l4t_version.sh
. "$HERE/l4t_version.sh"

# Overridable so the checks can be exercised on sample files (tests) and on
# custom images; the defaults are JetPack's own locations.
RELEASE_FILE=${EDGEAS_L4T_RELEASE_FILE:-/etc/nv_tegra_release}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PREFIX=/opt/edgeas
STATION_USER=edgeas
SOURCE=""
WITH_SERVICE=1

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$1" >&2
    [[ $# -gt 1 ]] && printf 'hint: %s\n' "$2" >&2
    exit 1
}

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --source) SOURCE=${2:?--source needs a value}; shift 2 ;;
            --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
            --user) STATION_USER=${2:?--user needs a value}; shift 2 ;;
            --no-service) WITH_SERVICE=0; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option '$1'" "run $0 --help" ;;
        esac
    done
    if [[ -z $SOURCE ]]; then
        # Default: the checkout this script lives in (edgeas is installed from source).
        if [[ -f $HERE/../pyproject.toml ]]; then
            SOURCE=$(cd "$HERE/.." && pwd)
        else
            SOURCE=edgeas
        fi
    fi
}

# Prints the L4T version of this device, or stops when it is not a Jetson.
detect_l4t() {
    local text version
    if [[ -r $RELEASE_FILE ]]; then
        text=$(<"$RELEASE_FILE")
        version=$(l4t_from_release_text "$text") ||
            die "cannot read an L4T release from $RELEASE_FILE: '${text%%$'\n'*}'" \
                "expected a line like '# R36 (release), REVISION: 4.3, ...'"
    elif command -v dpkg-query >/dev/null &&
        text=$(dpkg-query -W -f='${Version}' nvidia-l4t-core 2>/dev/null); then
        version=$(l4t_from_core_package "$text") ||
            die "cannot read an L4T release from nvidia-l4t-core version '$text'"
    else
        die "this is not a Jetson: $RELEASE_FILE is missing and nvidia-l4t-core is not installed" \
            "run this script on a Jetson flashed with JetPack 5.1, 6 or 7"
    fi
    echo "$version"
}

check_python() {
    local jp=$1 version
    version=$(python3 -c 'import platform; print(platform.python_version())') ||
        die "python3 not found" "sudo apt-get install python3"
    if ! python_supported "$version"; then
        if [[ $jp == 5 ]]; then
            # A newer Python alone would not do: JetPack 5's TensorRT bindings are built for 3.8.
            die "JetPack 5 ships Python $version, and edgeas needs Python 3.10 or newer" \
                "flash JetPack 6 (Orin) or 7; JetPack 5's TensorRT bindings exist only for its Python"
        fi
        die "system Python $version is too old: edgeas needs 3.10 or newer"
    fi
    echo "$version"
}

install_system_packages() {
    local missing=()
    # Debian and Ubuntu split ensurepip (venv) and the C headers (pycuda) out of python3.
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
    python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        missing+=(python3-dev)
    command -v g++ >/dev/null || missing+=(build-essential)
    # TensorRT's Python bindings are a JetPack Debian package, never a pip wheel here.
    python3 -c 'import tensorrt' 2>/dev/null || missing+=(python3-libnvinfer)
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing Debian packages: ${missing[*]}"
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    python3 -c 'import tensorrt' 2>/dev/null ||
        die "TensorRT's Python module is still missing after installing python3-libnvinfer" \
            "install JetPack's components: sudo apt-get install nvidia-jetpack"
    [[ -x $CUDA_HOME/bin/nvcc ]] ||
        die "the CUDA toolkit is not at $CUDA_HOME (no nvcc): pycuda is built against it" \
            "sudo apt-get install nvidia-jetpack, or set CUDA_HOME"
}

# 0 when JetPack's system OpenCV is importable and built with GStreamer (csi://, rtsp://).
system_opencv_has_gstreamer() {
    python3 - <<'EOF' 2>/dev/null
import re, sys
import cv2
info = cv2.getBuildInformation()
sys.exit(0 if re.search(r"GStreamer:\s+YES", info) else 1)
EOF
}

create_user_and_dirs() {
    if ! id "$STATION_USER" >/dev/null 2>&1; then
        say "creating system user $STATION_USER"
        useradd --system --home-dir /var/lib/edgeas --no-create-home \
            --shell /usr/sbin/nologin "$STATION_USER"
    fi
    # video: GPU (/dev/nvhost-*, /dev/nvmap) and cameras; render exists on newer images.
    local group
    for group in video render; do
        if getent group "$group" >/dev/null; then
            usermod -aG "$group" "$STATION_USER"
        fi
    done
    install -d -m 0755 "$PREFIX" /etc/edgeas
    install -d -o "$STATION_USER" -g "$STATION_USER" -m 0750 /var/lib/edgeas /var/lib/edgeas/events
    if [[ ! -f /etc/edgeas/station.yaml ]]; then
        # Never overwrite an edited station file on a re-run.
        install -m 0644 "$HERE/station.example.yaml" /etc/edgeas/station.yaml
        say "wrote /etc/edgeas/station.yaml from the example: edit model and source"
    fi
}

create_venv() {
    local venv=$PREFIX/venv
    if [[ ! -x $venv/bin/python ]]; then
        say "creating $venv (with JetPack's system packages: tensorrt, OpenCV)"
        python3 -m venv --system-site-packages "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
}

# JetPack's OpenCV (and TensorRT's helpers) are built against NumPy 1.x: a NumPy 2
# pulled into the venv would break `import cv2`. Pin pip to the system NumPy's major.
write_constraints() {
    local file=$PREFIX/constraints.txt major
    major=$(python3 -c 'import numpy; print(numpy.__version__.split(".")[0])' 2>/dev/null || true)
    if [[ -n $major ]]; then
        echo "numpy<$((major + 1))" >"$file"
    else
        : >"$file"
    fi
    echo "$file"
}

install_edgeas() {
    local venv=$PREFIX/venv constraints=$1
    # pip takes the extra after a path, a wheel or a name alike: /src/edgeas[jetson].
    local spec="${SOURCE}[jetson]"
    say "installing edgeas from $SOURCE (extra: jetson, runtime only)"
    PIP_CONSTRAINT=$constraints "$venv/bin/python" -m pip install --quiet "$spec"
    if system_opencv_has_gstreamer; then
        # The wheel edgeas depends on has no GStreamer and would shadow JetPack's cv2
        # inside the venv; removing it lets the system OpenCV (with GStreamer) win.
        local pkg
        for pkg in opencv-python-headless opencv-python; do
            if "$venv/bin/python" -m pip show --quiet "$pkg" >/dev/null 2>&1; then
                say "removing the pip $pkg from the venv so JetPack's OpenCV (GStreamer) is used"
                "$venv/bin/python" -m pip uninstall --quiet --yes "$pkg"
            fi
        done
    else
        warn "JetPack's OpenCV with GStreamer was not found: csi:// and rtsp:// sources will" \
            "not open (USB, files and folders work). Fix: sudo apt-get install nvidia-opencv"
    fi
}

install_pycuda() {
    local venv=$PREFIX/venv constraints=$1
    if "$venv/bin/python" -c 'import pycuda' 2>/dev/null; then
        return 0
    fi
    say "building pycuda against $CUDA_HOME (a few minutes)"
    local targets=$CUDA_HOME/targets/aarch64-linux
    # --no-binary: a wheel must match this device's CUDA; --no-cache-dir: a wheel
    # cached before a JetPack upgrade would link an older CUDA.
    PATH=$CUDA_HOME/bin:$PATH CUDA_ROOT=$CUDA_HOME \
        CPATH=$targets/include${CPATH:+:$CPATH} \
        LIBRARY_PATH=$targets/lib:$targets/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH} \
        PIP_CONSTRAINT=$constraints \
        "$venv/bin/python" -m pip install --quiet --no-cache-dir --no-binary pycuda pycuda
}

# The unit for this prefix and user on stdout (the tests verify what this prints).
render_unit() {
    sed -e "s#/opt/edgeas/venv#$PREFIX/venv#g" -e "s#^User=edgeas\$#User=$STATION_USER#" \
        -e "s#^Group=edgeas\$#Group=$STATION_USER#" "$HERE/edgeas-station.service"
}

install_service() {
    local unit=/etc/systemd/system/edgeas-station.service
    say "installing $unit"
    render_unit >"$unit.tmp"
    mv "$unit.tmp" "$unit"
    systemctl daemon-reload
}

verify() {
    say "checking the installation: edgeas doctor --for stream"
    # Run as the station user so missing group rights (GPU, camera) show up now.
    if ! runuser -u "$STATION_USER" -- "$PREFIX/venv/bin/edgeas" doctor --for stream \
        --events-dir /var/lib/edgeas/events; then
        die "edgeas doctor found a missing piece (see above)" \
            "fix it and run this script again; it keeps what is already installed"
    fi
}

main() {
    parse_args "$@"
    local l4t jp python constraints
    l4t=$(detect_l4t)
    jp=$(jetpack_major "$l4t") || die "refusing to install on L4T R$l4t" \
        "supported: JetPack 5.1 (L4T R35.2+), JetPack 6 (R36), JetPack 7 (R38/R39)"
    say "L4T R$l4t = JetPack $(jetpack_release "$l4t")"
    python=$(check_python "$jp")
    say "system Python $python"
    [[ $EUID -eq 0 ]] || die "this step needs root (apt-get, a system user, systemd)" \
        "run: sudo $0 $*"

    install_system_packages
    create_user_and_dirs
    create_venv
    constraints=$(write_constraints)
    install_edgeas "$constraints"
    install_pycuda "$constraints"
    if [[ $WITH_SERVICE -eq 1 ]]; then
        install_service
    fi
    verify

    say "done. Next:"
    cat <<EOF
  1. build the engine on this device (engines are device-specific):
       sudo install -o $STATION_USER -m 0640 model.onnx /var/lib/edgeas/
       sudo -u $STATION_USER $PREFIX/venv/bin/edgeas build-engine --onnx /var/lib/edgeas/model.onnx \\
           --precision fp16 -o /var/lib/edgeas/model.engine
  2. edit /etc/edgeas/station.yaml (model, source, events)
  3. sudo systemctl enable --now edgeas-station && journalctl -u edgeas-station -f
EOF
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
