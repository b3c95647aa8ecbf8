#!/usr/bin/env bash
# Regenerate the committed V4L2 bindings of this vendored v4l2-sys-mit:
#     src/bindings/x86_64.rs    src/bindings/aarch64.rs
#
# Upstream v4l2-sys-mit 0.3.0 ran bindgen at build time (build.rs:
# `bindgen::Builder::default().header("wrapper.h").generate()`), which needs libclang on every machine
# that builds mce. This copy runs the same generation once, here, and commits the output; building
# then needs only a Rust toolchain. Run this script only when the bindings must change (a newer kernel
# header, a new target architecture), from any directory:
#
#     vendor/v4l2-sys-mit/regenerate.sh            # both architectures
#     vendor/v4l2-sys-mit/regenerate.sh aarch64    # one
#
# Same header and same options as upstream: wrapper.h (`#include <linux/videodev2.h>`) and bindgen's
# defaults (the CLI's defaults are the Builder's; on x86_64 the output is byte-identical to what the
# upstream build.rs writes). The only clang arguments are the target triple and the include dirs, so
# that one host can generate both architectures without picking up the host's own headers.
#
# Needs:
#   - bindgen CLI 0.65.1, the version upstream's build.rs used:
#         cargo install bindgen-cli --version 0.65.1 --locked
#     (BINDGEN=/path/to/bindgen to use another binary; ALLOW_OTHER_BINDGEN=1 to accept another version)
#   - libclang (Debian: apt-get install libclang1-14); set LIBCLANG_PATH if bindgen cannot find it,
#     e.g. LIBCLANG_PATH=/usr/lib/llvm-14/lib
#   - the kernel UAPI and glibc headers of each target:
#       x86_64:  X86_64_INCLUDE  (default "/usr/include/x86_64-linux-gnu /usr/include")
#                Debian amd64: linux-libc-dev libc6-dev (or the -amd64-cross packages on another host,
#                then X86_64_INCLUDE=/usr/x86_64-linux-gnu/include)
#       aarch64: AARCH64_INCLUDE (default "/usr/aarch64-linux-gnu/include")
#                Debian: apt-get install linux-libc-dev-arm64-cross libc6-dev-arm64-cross
#
# Each generated file starts with a comment naming the header it came from, the kernel version of that
# header (LINUX_VERSION_CODE and the Debian package, when dpkg knows it), the bindgen and clang versions.
# Afterwards: `cargo test -p mce-device --test v4l2_bindings` compares the struct sizes with the host's
# kernel header, and `git diff vendor/v4l2-sys-mit/src/bindings` shows what changed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

BINDGEN="${BINDGEN:-bindgen}"
X86_64_INCLUDE="${X86_64_INCLUDE:-/usr/include/x86_64-linux-gnu /usr/include}"
AARCH64_INCLUDE="${AARCH64_INCLUDE:-/usr/aarch64-linux-gnu/include}"
want_bindgen="0.65.1"

if ! command -v "$BINDGEN" >/dev/null 2>&1; then
    echo "error: bindgen not found; cargo install bindgen-cli --version $want_bindgen --locked" >&2
    exit 1
fi
bindgen_version="$("$BINDGEN" --version | awk '{print $2}')"
if [ "$bindgen_version" != "$want_bindgen" ] && [ "${ALLOW_OTHER_BINDGEN:-0}" != "1" ]; then
    echo "error: bindgen $bindgen_version found, upstream used $want_bindgen (ALLOW_OTHER_BINDGEN=1 to go on)" >&2
    exit 1
fi

# "6.1.187" from linux/version.h's LINUX_VERSION_CODE (the sublevel saturates at 255).
kernel_version() {
    local code
    code="$(awk '/#define LINUX_VERSION_CODE/ {print $3}' "$1/linux/version.h" 2>/dev/null || true)"
    if [ -n "$code" ]; then
        echo "$((code >> 16)).$(((code >> 8) & 255)).$((code & 255))"
    else
        echo "unknown"
    fi
}

# "linux-libc-dev:amd64 6.1.187-1" for the package that owns a file, when dpkg knows it.
debian_package() {
    local pkg
    command -v dpkg-query >/dev/null 2>&1 || { echo "not a dpkg system"; return; }
    pkg="$(dpkg-query -S "$1" 2>/dev/null | head -n1 | sed 's/: .*//' || true)"
    if [ -n "$pkg" ]; then
        echo "$pkg $(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || echo '?')"
    else
        echo "not from a package"
    fi
}

generate() {
    local arch="$1" triple="$2" includes="$3"
    local args=(--target="$triple" -nostdlibinc) dir header="" uapi="" out tmp
    for dir in $includes; do
        args+=(-isystem "$dir")
        if [ -z "$header" ] && [ -f "$dir/linux/videodev2.h" ]; then
            header="$dir/linux/videodev2.h"
            uapi="$dir"
        fi
    done
    if [ -z "$header" ]; then
        echo "error: $arch: no linux/videodev2.h under: $includes" >&2
        echo "       (see the header of $0 for the packages that provide it)" >&2
        exit 1
    fi

    out="src/bindings/$arch.rs"
    tmp="$(mktemp)"
    "$BINDGEN" wrapper.h -o "$tmp" -- "${args[@]}"
    mkdir -p src/bindings
    {
        echo "// Pre-generated V4L2 bindings for $triple; do not edit: regenerate with"
        echo "// vendor/v4l2-sys-mit/regenerate.sh (see its header)."
        echo "//"
        echo "// header:   $header (wrapper.h: #include <linux/videodev2.h>)"
        echo "// kernel:   $(kernel_version "$uapi") (LINUX_VERSION_CODE of $uapi/linux/version.h)"
        echo "// package:  $(debian_package "$header")"
        echo "// bindgen:  $bindgen_version, default options (as upstream's build.rs)"
        echo "// clang:    ${args[*]}"
        echo
        cat "$tmp"
    } >"$out"
    rm -f "$tmp"
    echo "$arch: wrote $out from $header (kernel $(kernel_version "$uapi"))"
}

arches=("$@")
[ ${#arches[@]} -eq 0 ] && arches=(x86_64 aarch64)
for arch in "${arches[@]}"; do
    case "$arch" in
        x86_64) generate x86_64 x86_64-unknown-linux-gnu "$X86_64_INCLUDE" ;;
        aarch64) generate aarch64 aarch64-unknown-linux-gnu "$AARCH64_INCLUDE" ;;
        *)
            echo "error: unknown arch '$arch' (x86_64, aarch64; a new one needs a case here and a cfg in src/lib.rs)" >&2
            exit 1
            ;;
    esac
done
