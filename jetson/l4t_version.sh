# shellcheck shell=bash
# L4T / JetPack version helpers, sourced by install.sh and by tests/test_jetson.py.
# Only functions: sourcing this file changes nothing and runs nothing.

# l4t_from_release_text TEXT
#   TEXT is the content of /etc/nv_tegra_release, whose first line looks like
#   "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, ...".
#   Prints the L4T version as MAJOR.MINOR.PATCH (36.4.3); returns 1 when TEXT is not such a line.
l4t_from_release_text() {
    local first re='^# R([0-9]+) \(release\), REVISION: ([0-9]+)(\.([0-9]+))?'
    first=${1%%$'\n'*}
    if [[ $first =~ $re ]]; then
        printf '%s.%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[4]:-0}"
        return 0
    fi
    return 1
}

# l4t_from_core_package VERSION
#   Fallback for images without /etc/nv_tegra_release: the Debian version of the
#   nvidia-l4t-core package ("36.4.3-20250107174145") carries the same number.
l4t_from_core_package() {
    local re='^([0-9]+)\.([0-9]+)(\.([0-9]+))?-'
    if [[ $1 =~ $re ]]; then
        printf '%s.%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[4]:-0}"
        return 0
    fi
    return 1
}

# jetpack_major L4T_VERSION
#   Prints the JetPack major version (5, 6 or 7) of a supported L4T release.
#   For an unsupported release prints why on stderr and returns 1.
jetpack_major() {
    local major minor rest
    IFS=. read -r major minor rest <<<"$1"
    if ! [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]]; then
        echo "error: '$1' is not an L4T version (expected MAJOR.MINOR.PATCH, e.g. 36.4.3)" >&2
        return 1
    fi
    case $major in
        35)
            # R35.1 is JetPack 5.0.2 with TensorRT 8.4, which lacks execute_async_v3.
            if ((minor < 2)); then
                echo "error: L4T R$1 (JetPack 5.0.x) is not supported: its TensorRT 8.4 lacks" \
                    "the tensor I/O API edgeas uses; update to JetPack 5.1 (L4T R35.2) or newer" >&2
                return 1
            fi
            echo 5
            ;;
        36) echo 6 ;;
        38 | 39) echo 7 ;;
        *)
            if ((major < 35)); then
                echo "error: L4T R$1 (JetPack 4 or older) is not supported: it ships Python 3.6" \
                    "and TensorRT 8.2 or older; edgeas needs JetPack 5.1 (L4T R35.2) or newer" >&2
            else
                echo "error: L4T R$1 is not a release this installer knows (supported: R35.2+," \
                    "R36, R38, R39 = JetPack 5.1, 6, 7); check jetson/README.md for updates" >&2
            fi
            return 1
            ;;
    esac
}

# jetpack_release L4T_VERSION
#   Prints the JetPack release of a known L4T version (36.4.3 -> 6.2), or "<major>.x".
jetpack_release() {
    local major minor patch
    IFS=. read -r major minor patch <<<"$1"
    case "$major.$minor.${patch:-0}" in
        35.2.1) echo 5.1 ;;
        35.3.1) echo 5.1.1 ;;
        35.4.1) echo 5.1.2 ;;
        35.5.0) echo 5.1.3 ;;
        35.6.0) echo 5.1.4 ;;
        36.3.0) echo 6.0 ;;
        36.4.0) echo 6.1 ;;
        36.4.3) echo 6.2 ;;
        36.4.4) echo 6.2.1 ;;
        38.2.0 | 38.2.1) echo 7.0 ;;
        38.4.0) echo 7.1 ;;
        *)
            local jp
            jp=$(jetpack_major "$1" 2>/dev/null) || return 1
            echo "$jp.x"
            ;;
    esac
}

# python_supported VERSION
#   Returns 0 when a Python version string (3.10.12) is one edgeas runs on (3.10+).
python_supported() {
    local major minor rest
    IFS=. read -r major minor rest <<<"$1"
    [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
    ((major > 3 || (major == 3 && minor >= 10)))
}
