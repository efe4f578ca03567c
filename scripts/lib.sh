# Shared helpers for scripts/: logging, root checks, Debian packages.
# Sourced, never run.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need_packages PKG...: install the Debian packages that are missing (root only).
need_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages: ${missing[*]} (run as root, or install them)"
    log "installing ${missing[*]}"
    if [ -z "${TETHER_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2 || die "apt-get update failed"
        export TETHER_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

# swift_build ARGS...: swift build, without the noise of a dependency's
# CMake warnings; fails when the build fails.
swift_build() {
    set -o pipefail
    if ! swift build "$@" 2>&1 | { grep -vE '^(warning: .swift-distributed-tracing|    /.*CMakeLists.txt)' >&2 || true; }; then
        die "swift build $* failed"
    fi
}

# build_release: the three binaries, optimized, with the Swift runtime
# linked in and no PIE: they start faster, and every shim shares the runtime's
# pages instead of dirtying its own copy with relocations (docs/benchmarks.md).
build_release() {
    for product in tether-shim containerd-shim-tether-v1 tetherd tether; do
        swift_build -c release --static-swift-stdlib -Xlinker -no-pie --product "$product"
    done
}
