"""Build pycuda from its sdist into a wheel, compiling its C++ sources in parallel.

    python benchmarks/gpu_pycuda_build.py --sdist .gpu-wheels/pycuda-2026.1.tar.gz \
        --out /tmp/pycuda-wheel [--jobs 16] [--cuda-root /usr/local/cuda]

For `make gpu-check` on a lent GPU machine, which has the CUDA toolkit but no pycuda
and no network. pycuda's setup.py builds one extension of ~70 C++ files (its Boost.Python
subset included) one file at a time; setuptools' own `--parallel` only runs several
extensions at once. So this script runs setup.py in-process with distutils'
`CCompiler.compile` spread over a thread pool (each file is a compiler subprocess), which
turns minutes into tens of seconds on 16 cores.

The driver library: pycuda links with -lcuda. The toolkit's stubs folder has
libcuda.so; a driver-only mount (/usr/local/nvidia/lib64) may have only libcuda.so.1, in
which case a folder with a libcuda.so link to it is made for the link step.
"""

from __future__ import annotations

import argparse
import glob
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DRIVER_DIRS = ("{root}/lib64/stubs", "{root}/lib/stubs", "{root}/lib64", "{root}/lib",
               "{root}/targets/x86_64-linux/lib/stubs", "/usr/local/nvidia/lib64",
               "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib")


def python_header() -> Path | None:
    """Python.h of this interpreter, which pycuda's C++ needs; None when absent."""
    path = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return path if path.is_file() else None


def cuda_root() -> Path | None:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_ROOT"),
                      "/usr/local/cuda"):
        if candidate and (Path(candidate) / "include" / "cuda.h").is_file():
            return Path(candidate)
    nvcc = shutil.which("nvcc")
    if nvcc:  # bin/nvcc -> the toolkit root, through a symlink if need be
        root = Path(nvcc).resolve().parent.parent
        if (root / "include" / "cuda.h").is_file():
            return root
    return None


def driver_lib_dir(root: Path, scratch: Path) -> Path | None:
    """A folder holding libcuda.so for the linker (see the module docstring)."""
    for pattern in DRIVER_DIRS:
        folder = Path(pattern.format(root=root))
        if (folder / "libcuda.so").exists():
            return folder
    for pattern in DRIVER_DIRS:
        found = sorted(glob.glob(str(Path(pattern.format(root=root)) / "libcuda.so.1*")))
        if found:
            scratch.mkdir(parents=True, exist_ok=True)
            link = scratch / "libcuda.so"
            link.unlink(missing_ok=True)
            link.symlink_to(found[0])
            return scratch
    return None


STATS = {"files": 0, "running": 0, "most_at_once": 0}


def _parallel_compile(jobs: int) -> None:
    """distutils' CCompiler.compile, with the per-file compiler calls in a thread pool."""
    import threading

    from setuptools._distutils import ccompiler

    lock = threading.Lock()
    needed = ("_setup_compile", "_get_cc_args", "_compile")
    if not all(hasattr(ccompiler.CCompiler, n) for n in needed):  # another distutils
        print("distutils' CCompiler lacks the methods patched here: compiling one file "
              "at a time", flush=True)
        return

    def compile(self, sources, output_dir=None, macros=None, include_dirs=None, debug=False,
                extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj: str) -> None:
            src, ext = build[obj]
            with lock:
                STATS["files"] += 1
                STATS["running"] += 1
                STATS["most_at_once"] = max(STATS["most_at_once"], STATS["running"])
            try:
                self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)
            finally:
                with lock:
                    STATS["running"] -= 1

        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, objects))  # list(): re-raise the first compile error
        return objects

    ccompiler.CCompiler.compile = compile


def build(sdist: Path, out: Path, jobs: int, root: Path | None,
          lib_dir: Path | None = None) -> Path:
    """The wheel built from `sdist` into `out`; raises SystemExit with a reason."""
    if python_header() is None:
        raise SystemExit(f"no Python.h for {sys.executable} in "
                         f"{sysconfig.get_paths()['include']}: install python3-dev")
    root = root or cuda_root()
    if root is None:
        raise SystemExit("no CUDA toolkit found (cuda.h): set CUDA_HOME")
    work = Path(tempfile.mkdtemp(prefix="pycuda-build-"))
    lib_dir = lib_dir or driver_lib_dir(root, work / "driver")
    if lib_dir is None:
        raise SystemExit(f"no libcuda.so or libcuda.so.1 under {root} or the driver folders")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = next(p for p in work.iterdir() if p.is_dir() and (p / "setup.py").is_file())
    # configure.py writes siteconf.py, which setup.py reads
    subprocess.run([sys.executable, "configure.py", f"--cuda-root={root}",
                    f"--cudadrv-lib-dir={lib_dir}", "--no-cuda-enable-curand"],
                   cwd=src, check=True)
    out.mkdir(parents=True, exist_ok=True)
    _parallel_compile(jobs)
    os.chdir(src)
    sys.path.insert(0, str(src))
    sys.argv = ["setup.py", "-q", "bdist_wheel", "-d", str(out)]
    try:
        runpy.run_path("setup.py", run_name="__main__")
    except SystemExit as exc:  # setup() exits on success too (code None or 0)
        if exc.code not in (None, 0):
            raise
    wheels = sorted(out.glob("pycuda-*.whl"))
    if not wheels:
        raise SystemExit(f"setup.py left no pycuda wheel in {out}")
    return wheels[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    parser.add_argument("--cuda-root", type=Path, default=None)
    parser.add_argument("--driver-lib-dir", type=Path, default=None,
                        help="a folder with libcuda.so, where the search finds none")
    args = parser.parse_args()
    start = time.perf_counter()
    wheel = build(args.sdist.resolve(), args.out.resolve(), args.jobs, args.cuda_root,
                  args.driver_lib_dir)
    print(f"built {wheel} in {time.perf_counter() - start:.0f} s: {STATS['files']} files, "
          f"up to {STATS['most_at_once']} compiled at once ({args.jobs} jobs)")


if __name__ == "__main__":
    main()
