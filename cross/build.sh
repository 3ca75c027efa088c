#!/usr/bin/env bash
# Build static release binaries of hms-sync for the boxes we ship to:
#
#   x86_64-unknown-linux-musl   -> dist/hms-sync-x86_64-unknown-linux-musl
#   aarch64-unknown-linux-musl  -> dist/hms-sync-aarch64-unknown-linux-musl
#
# Usage (from anywhere; runs as root on Debian 12, installs what is missing):
#   cross/build.sh                      # both targets
#   cross/build.sh aarch64-unknown-linux-musl
#
# Environment:
#   CARGO_TARGET_DIR   where cargo builds (default: <repo>/target)
#   CRATE_DIR          crate to build (default: the repo this script lives in)
#   BIN                binary name (default: hms-sync)
#   DIST_DIR           output folder (default: <CRATE_DIR>/dist)
#   NO_INSTALL=1       never call apt-get / rustup; fail if something is missing
#   RUSTFLAGS          if set, cargo uses it INSTEAD of the per-target flags
#                      below: keep it unset unless you know why.
#
# See cross/README.md for the why of each setting.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CRATE_DIR="${CRATE_DIR:-$(dirname "$script_dir")}"
CRATE_DIR="$(cd "$CRATE_DIR" && pwd)"
BIN="${BIN:-hms-sync}"
DIST_DIR="${DIST_DIR:-$CRATE_DIR/dist}"
NO_INSTALL="${NO_INSTALL:-0}"

ALL_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
for t in "${TARGETS[@]}"; do
    case "$t" in
        x86_64-unknown-linux-musl|aarch64-unknown-linux-musl) ;;
        *) echo "build.sh: unsupported target '$t' (supported: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

cd "$CRATE_DIR"
[ -f Cargo.toml ] || die "no Cargo.toml in $CRATE_DIR"
[ -f Cargo.lock ] || die "no Cargo.lock in $CRATE_DIR (the build uses --locked)"

# ---------------------------------------------------------------- tools
# Debian packages we need, and a command that proves each one is there.
declare -A PKG_FOR=(
    [musl-gcc]=musl-tools                       # C compiler for x86_64-musl (ring)
    [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu # C compiler + ar for aarch64 (ring)
    [qemu-aarch64-static]=qemu-user-static      # runs the aarch64 binary here
    [file]=file                                 # "statically linked" check
    [readelf]=binutils                          # no PT_INTERP / no NEEDED check
)
missing_pkgs=()
for cmd in "${!PKG_FOR[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing_pkgs+=("${PKG_FOR[$cmd]}")
done
# The aarch64 C headers ring compiles against: only a Recommends of
# gcc-aarch64-linux-gnu, which --no-install-recommends leaves out.
[ -f /usr/aarch64-linux-gnu/include/stdint.h ] || missing_pkgs+=(libc6-dev-arm64-cross)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    # de-duplicate
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
    [ "$NO_INSTALL" = 1 ] && die "missing packages: ${missing_pkgs[*]} (NO_INSTALL=1)"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "missing packages ${missing_pkgs[*]}; run as root or install them"
        sudo="sudo"
    fi
    log "apt-get install ${missing_pkgs[*]}"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing_pkgs[@]}"
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"
command -v rustup >/dev/null 2>&1 || die "rustup not found: it is needed to add the musl targets"
installed_targets="$(rustup target list --installed)"
for t in "${TARGETS[@]}"; do
    if ! grep -qx "$t" <<<"$installed_targets"; then
        [ "$NO_INSTALL" = 1 ] && die "rust target $t missing (NO_INSTALL=1)"
        log "rustup target add $t"
        rustup target add "$t"
    fi
done

# ---------------------------------------------------------------- per-target settings
# cc-rs (used by ring's build script) reads CC_<target>/AR_<target>; cargo reads
# CARGO_TARGET_<TARGET>_{LINKER,RUSTFLAGS}. Per-target variables never leak into
# build scripts or proc-macros, which are still built for the host.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
export AR_x86_64_unknown_linux_musl="${AR_x86_64_unknown_linux_musl:-ar}"
export CC_aarch64_unknown_linux_musl="${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}"
export AR_aarch64_unknown_linux_musl="${AR_aarch64_unknown_linux_musl:-aarch64-linux-gnu-ar}"
# The Rust musl targets ship their own crt objects and libc.a ("self-contained"),
# so LLVM's linker bundled with rustc links aarch64 without a musl cross toolchain.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-rust-lld}"
# +crt-static is already the default on musl; say it anyway so a changed default
# or a stray config cannot give us a dynamic binary.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="${CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS:--C target-feature=+crt-static}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS:--C target-feature=+crt-static}"
# aarch64 binaries are run here through qemu (cargo run / cargo test too).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER:-qemu-aarch64-static}"

if [ -n "${RUSTFLAGS:-}" ] || [ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    log "warning: RUSTFLAGS is set; cargo ignores the per-target flags above"
fi

target_dir="${CARGO_TARGET_DIR:-$CRATE_DIR/target}"
mkdir -p "$DIST_DIR"

# ---------------------------------------------------------------- build + check
summary=()
for t in "${TARGETS[@]}"; do
    log "cargo build --release --locked --target $t"
    cargo build --release --locked --target "$t" --bin "$BIN"

    src="$target_dir/$t/release/$BIN"
    [ -x "$src" ] || die "expected binary not found: $src"
    out="$DIST_DIR/$BIN-$t"
    cp -f "$src" "$out.tmp"
    mv -f "$out.tmp" "$out"

    # 1. static? file(1) says "statically linked" (or "static-pie linked",
    #    which is what Rust's musl targets produce: static AND position
    #    independent); no program interpreter and no NEEDED libraries.
    desc="$(file -b "$out")"
    echo "$out: $desc"
    case "$desc" in
        *"statically linked"*|*"static-pie linked"*) ;;
        *) die "$out is not statically linked: $desc" ;;
    esac
    if readelf -lW "$out" | grep -q 'Requesting program interpreter'; then
        die "$out has a program interpreter (dynamic loader)"
    fi
    if readelf -dW "$out" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$out needs shared libraries: $(readelf -dW "$out" | grep '(NEEDED)')"
    fi
    if [ "$t" = x86_64-unknown-linux-musl ] && command -v ldd >/dev/null 2>&1; then
        # glibc's ldd prints "not a dynamic executable" or "statically linked"
        # (and exits 1 for the former); anything listing a .so is a failure.
        ldd_out="$(ldd "$out" 2>&1 || true)"
        echo "ldd: $ldd_out"
        case "$ldd_out" in
            *"not a dynamic executable"*|*"statically linked"*) ;;
            *) die "ldd says $out is dynamic: $ldd_out" ;;
        esac
    fi

    # 2. size
    bytes="$(stat -c %s "$out")"
    mib="$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"

    # 3. does it run?
    case "$t" in
        x86_64-*)  runner=() ;;
        aarch64-*) runner=(qemu-aarch64-static) ;;
    esac
    if [ "$(uname -m)" = "${t%%-*}" ]; then runner=(); fi
    version="$("${runner[@]}" "$out" --version 2>&1)" || die "$out --version failed: $version"
    echo "$out --version: $version"

    summary+=("$(printf '%-28s %8s MiB  %s' "$t" "$mib" "$version")")
done

echo
echo "Built into $DIST_DIR:"
printf '  %s\n' "${summary[@]}"
