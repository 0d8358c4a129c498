#!/usr/bin/env bash
# A 3-node AetherOps cluster on loopback.
#
#   cluster/local.sh up       build, start nodes 1-3 (configs cluster/node{1,2,3}.toml),
#                             and initialize the cluster on first start
#   cluster/local.sh status   each member's view (leader, term, indexes, lag)
#   cluster/local.sh down     stop the nodes (SIGTERM, then wait)
#
# Data and logs live under $AETHER_CLUSTER_DIR (default cluster/.local): node1/ … node3/
# and node1.log … node3.log. gRPC on 127.0.0.1:50051-50053, HTTP on 127.0.0.1:8081-8083.
# TLS=1 (with `up`, `status`): a TLS cluster. The first `TLS=1 up` makes a throwaway CA and
# node certificates (scripts/make-certs) in $AETHER_CLUSTER_DIR/certs and starts each node
# with a config that adds a [tls] section (nodeN-tls.toml there); it prints the aetherctl
# flags to use. Keep one data directory per mode: a TLS cluster's members dial each other
# over TLS only.
# AUTH=1 (with `up`, `status`): tokens checked. The first `AUTH=1 up` makes a development
# HMAC secret ($AETHER_CLUSTER_DIR/auth/dev.secret, signing client and node tokens alike —
# production gives each node its own key) and an admin token valid 24 h
# ($AETHER_CLUSTER_DIR/auth/admin.token), which this script's aetherctl calls use.
# TLS=1 and AUTH=1 combine.
# AETHER_PROFILE=release builds and runs optimized binaries (for benchmarks); the default
# is the dev profile that `scripts/test` also builds. AETHER_BIN_DIR=DIR runs the aetherd and
# aetherctl found in DIR instead, without building (to compare two builds side by side).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
source "$root/scripts/lib.sh"
state="${AETHER_CLUSTER_DIR:-$here/.local}"
addrs="127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053"
profile="${AETHER_PROFILE:-dev}"
case "$profile" in
    dev) bindir="$CARGO_TARGET_DIR/debug" ;;
    release) bindir="$CARGO_TARGET_DIR/release" ;;
    *) echo "AETHER_PROFILE must be dev or release, not $profile" >&2; exit 2 ;;
esac
if [ -n "${AETHER_BIN_DIR:-}" ]; then
    bindir="$AETHER_BIN_DIR"
fi
aetherd="$bindir/aetherd"
aetherctl_bin="$bindir/aetherctl"
certs="$state/certs"
tls="${TLS:-0}"
auth="${AUTH:-0}"
keys="$state/auth"
aetherctl() {
    local flags=()
    [ "$tls" = 1 ] && flags+=(--ca-file "$certs/ca.pem")
    [ "$auth" = 1 ] && flags+=(--token-file "$keys/admin.token")
    "$aetherctl_bin" "${flags[@]}" "$@"
}

# The config node $1 starts with: its file, plus [tls] and [auth] sections in those modes.
node_config() {
    if [ "$tls" != 1 ] && [ "$auth" != 1 ]; then
        echo "$here/node$1.toml"
        return
    fi
    local config="$state/node$1-secure.toml"
    {
        cat "$here/node$1.toml"
        if [ "$tls" = 1 ]; then
            printf '\n[tls]\ncert_file = "%s"\nkey_file = "%s"\nca_file = "%s"\n' \
                "$certs/node$1.pem" "$certs/node$1.key" "$certs/ca.pem"
        fi
        if [ "$auth" = 1 ]; then
            printf '\n[auth]\nenabled = true\nissuer = "aetherops-dev"\naudience = "aetherops"\n'
            printf 'node_audience = "aetherops-node"\nnode_key_kid = "dev"\nnode_key_file = "%s"\n' \
                "$keys/dev.secret"
            printf '\n[[auth.keys]]\nkid = "dev"\nalgorithms = ["HS256"]\nnode_plane = true\nhmac_secret_file = "%s"\n' \
                "$keys/dev.secret"
        fi
    } >"$config"
    echo "$config"
}

# A development secret and an admin token (AUTH=1), made once per cluster directory.
make_keys() {
    mkdir -p "$keys"
    chmod 700 "$keys"
    if [ ! -f "$keys/dev.secret" ]; then
        head -c 48 /dev/urandom | base64 | tr -d '\n' >"$keys/dev.secret"
    fi
    "$aetherctl_bin" auth mint --secret-file "$keys/dev.secret" --kid dev --sub local-admin \
        --role admin --ttl 24h >"$keys/admin.token"
}

running() { [ -f "$state/node$1.pid" ] && kill -0 "$(cat "$state/node$1.pid")" 2>/dev/null; }

up() {
    if [ -z "${AETHER_BIN_DIR:-}" ]; then
        ensure_libclang
        (cd "$root" && cargo build --locked --profile "$profile" --bin aetherd --bin aetherctl)
    fi
    mkdir -p "$state"
    if [ "$tls" = 1 ] && [ ! -f "$certs/ca.pem" ]; then
        "$root/scripts/make-certs" "$certs" 3
    fi
    if [ "$auth" = 1 ]; then
        make_keys
    fi
    for i in 1 2 3; do
        if running "$i"; then
            echo "node $i already running (pid $(cat "$state/node$i.pid"))"
            continue
        fi
        nohup "$aetherd" --config "$(node_config "$i")" --data-dir "$state/node$i" \
            >>"$state/node$i.log" 2>&1 &
        echo $! >"$state/node$i.pid"
        echo "started node $i (pid $!), log $state/node$i.log"
    done
    for i in 1 2 3; do
        local deadline=$((SECONDS + 60))
        until aetherctl --addr "127.0.0.1:5005$i" status >/dev/null 2>&1; do
            [ $SECONDS -lt $deadline ] || { echo "node $i did not come up; see $state/node$i.log" >&2; exit 1; }
            sleep 0.2
        done
    done
    if aetherctl --addr 127.0.0.1:50051 --output json status | grep -q '"voters":\[\]'; then
        aetherctl --addr "$addrs" cluster init
    fi
    local deadline=$((SECONDS + 60))
    until aetherctl --addr 127.0.0.1:50051 --output json status | grep -q '"leader_id":[0-9]'; do
        [ $SECONDS -lt $deadline ] || { echo "no leader elected" >&2; exit 1; }
        sleep 0.2
    done
    status
    if [ "$tls" = 1 ]; then
        echo "TLS cluster: use aetherctl --ca-file $certs/ca.pem (or AETHER_CA_FILE=$certs/ca.pem);"
        echo "HTTP is https too: curl --cacert $certs/ca.pem https://127.0.0.1:8081/healthz"
    fi
    if [ "$auth" = 1 ]; then
        echo "tokens checked: aetherctl --token-file $keys/admin.token (admin, 24 h); more with"
        echo "  aetherctl auth mint --secret-file $keys/dev.secret --kid dev --sub NAME --role reader|writer|admin"
    fi
}

down() {
    for i in 1 2 3; do
        if running "$i"; then
            kill -TERM "$(cat "$state/node$i.pid")"
        fi
    done
    for i in 1 2 3; do
        local deadline=$((SECONDS + 30))
        while running "$i"; do
            if [ $SECONDS -ge $deadline ]; then
                kill -KILL "$(cat "$state/node$i.pid")" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        rm -f "$state/node$i.pid"
    done
    echo "cluster stopped (data kept in $state)"
}

status() {
    aetherctl --addr "$addrs" cluster status
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
