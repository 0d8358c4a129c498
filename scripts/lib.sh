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
    apt_install libclang-dev
    have_libclang || { echo "libclang still missing after install" >&2; return 1; }
}

# Installs Debian packages quietly and without questions; the package lists are refreshed
# only when the first attempt fails (a fresh machine has none).
apt_install() {
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
    }
}

# The browser test (tests/graphiql_page.rs) drives Debian's Chromium.
ensure_chromium() {
    [ -x /usr/bin/chromium ] && return 0
    echo "chromium not found: installing it (the GraphiQL page test drives it)..." >&2
    apt_install chromium
    [ -x /usr/bin/chromium ] || { echo "chromium still missing after install" >&2; return 1; }
}

# The GraphiQL page async-graphql serves loads React and GraphiQL from unpkg.com, which this
# machine and CI cannot reach. The test serves those files to the browser itself, from the
# same npm packages (fetched once with npm, the registry being reachable), unpacked as
# `name@range/` so that a URL `https://unpkg.com/name@range/path` maps onto a file. The
# ranges are the ones async-graphql 7's GraphiQLSource names in its page.
export AETHEROPS_GRAPHIQL_ASSETS="${AETHEROPS_GRAPHIQL_ASSETS:-$HOME/.cache/aetherops-graphiql}"
GRAPHIQL_PACKAGES=(graphiql@4 react@18 react-dom@18)

ensure_graphiql_assets() {
    local pkg dir tmp tgz
    for pkg in "${GRAPHIQL_PACKAGES[@]}"; do
        dir="$AETHEROPS_GRAPHIQL_ASSETS/$pkg"
        [ -f "$dir/package.json" ] && continue
        command -v npm >/dev/null || apt_install npm
        echo "fetching $pkg from the npm registry for the GraphiQL page test..." >&2
        tmp=$(mktemp -d)
        tgz=$(cd "$tmp" && npm pack --silent "$pkg")
        mkdir -p "$dir"
        tar -xzf "$tmp/$tgz" -C "$dir" --strip-components=1
        rm -rf "$tmp"
    done
}

# scripts/bench-vs-etcd compares against Debian's etcd (3.4): /usr/bin/etcd.
ensure_etcd() {
    [ -x /usr/bin/etcd ] && return 0
    echo "etcd not found: installing etcd-server (scripts/bench-vs-etcd runs it)..." >&2
    apt_install etcd-server
    [ -x /usr/bin/etcd ] || { echo "etcd still missing after install" >&2; return 1; }
}

# perf, for scripts/sched-idle (Debian's linux-perf).
ensure_perf() {
    command -v perf >/dev/null && return 0
    echo "perf not found: installing linux-perf (scripts/sched-idle runs it)..." >&2
    apt_install linux-perf
    command -v perf >/dev/null || { echo "perf still missing after install" >&2; return 1; }
}
