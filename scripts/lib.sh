# Shared by the scripts: one stable build directory outside the clone (RocksDB's C++ is
# compiled once per machine, whatever clone or command builds), and libclang for bindgen.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aetherops-target}"

have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    # libclang.so itself (libclang-cpp, present on some machines, is not what bindgen loads).
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && return 0
    compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null && return 0
    compgen -G "/usr/lib/*/libclang.so*" >/dev/null && return 0
    return 1
}

# RocksDB's -sys crate runs bindgen, which needs libclang. Install it on Debian if missing.
ensure_libclang() {
    have_libclang && return 0
    echo "libclang not found: installing libclang-dev (RocksDB's bindings need it)..." >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get install -y -qq libclang-dev >/dev/null 2>&1 || {
        $sudo apt-get update -qq && $sudo apt-get install -y -qq libclang-dev
    }
    have_libclang || { echo "libclang still missing after install" >&2; return 1; }
}
