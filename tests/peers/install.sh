#!/usr/bin/env bash
# Installs the real peers the test suite runs against (`make peers`, run by `make test`):
#   * nginx, redis-server, the proxies (tinyproxy, microsocks, dante-server) and promtool (the
#     prometheus package), from Debian's packages, when they are absent and we are root;
#   * the Node `ws` server's dependencies, with `npm ci` from package-lock.json, when node_modules is
#     missing or older than the lock file.
# Without root, apt-get or npm, it says so and carries on: the tests that need a missing peer skip on a
# developer's machine and fail under CI=true.
set -euo pipefail
cd "$(dirname "$0")"

# apt_install SERVICE PACKAGE...: installs the first PACKAGE that apt has a candidate for, without
# starting its system service, and sets `installed` to its name. Needs root and apt-get.
apt_install() {
    local service=$1
    shift
    local package="" attempt candidate policy_out
    installed=""
    # An index fetch can fail with only a warning and exit 0, leaving no candidate: three attempts.
    for attempt in 1 2 3; do
        apt-get update -qq || true
        for candidate in "$@"; do
            # Captured first: `apt-cache ... | grep -q` under pipefail fails whenever grep exits
            # before apt-cache has written everything (SIGPIPE), which made this test flaky.
            policy_out=$(apt-cache policy "$candidate" 2>/dev/null || true)
            if [[ $policy_out == *"Candidate: "[0-9]* ]]; then
                package=$candidate
                break 2
            fi
        done
        echo "peers: no $service candidate after apt-get update (attempt $attempt of 3)" >&2
        sleep $((attempt * 5))
    done
    if [ -z "$package" ]; then
        echo "peers: no $service package found by apt-cache" >&2
        return 1
    fi
    # The tests run the peer with their own configuration on their own ports. A system service
    # started by the package would hold its port (80, 6379) for nothing, so the maintainer scripts
    # are told not to start it (policy-rc.d answering 101 is Debian's switch for that), unless the
    # machine already says so.
    local policy=/usr/sbin/policy-rc.d
    local made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null || status=$?
    if [ -n "$made_policy" ]; then
        rm -f "$policy"
    fi
    if [ "$status" != 0 ]; then
        return "$status"
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
    installed=$package
}

can_apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
}

install_nginx() {
    if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
        return 0
    fi
    if ! can_apt_install; then
        echo "peers: nginx is not installed and cannot be (needs root and apt-get): nginx tests will not run" >&2
        return 0
    fi
    apt_install nginx nginx-light nginx
    echo "peers: installed $installed ($(nginx -v 2>&1))"
}

# redis-server, for the Redis Streams sink's tests (tests/test_sink_redis.py), which start their own
# servers on free ports.
install_redis() {
    if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
        return 0
    fi
    if ! can_apt_install; then
        echo "peers: redis-server is not installed and cannot be (needs root and apt-get): Redis sink tests will not run" >&2
        return 0
    fi
    apt_install redis-server redis-server
    echo "peers: installed $installed ($(redis-server --version))"
}

# The proxies of tests/test_proxies.py, which start each on a free port with its own configuration:
# tinyproxy (HTTP CONNECT, Basic auth), microsocks (SOCKS5, user/password), dante-server's danted
# (SOCKS4; microsocks speaks only SOCKS5).
install_proxy() {
    local binary=$1 service=$2 package=$3
    if command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || [ -x "/usr/bin/$binary" ]; then
        return 0
    fi
    if ! can_apt_install; then
        echo "peers: $binary is not installed and cannot be (needs root and apt-get): proxy tests will not run" >&2
        return 0
    fi
    apt_install "$service" "$package"
    echo "peers: installed $installed"
}

install_proxies() {
    install_proxy tinyproxy tinyproxy tinyproxy
    install_proxy microsocks microsocks microsocks
    install_proxy danted danted dante-server
}

# promtool, from Debian's prometheus package: tests/test_metrics.py checks the PromQL of
# examples/grafana-dashboard.json with it (the Prometheus server it also ships is not started).
install_promtool() {
    if command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ]; then
        return 0
    fi
    if ! can_apt_install; then
        echo "peers: promtool is not installed and cannot be (needs root and apt-get): the dashboard's PromQL check will not run" >&2
        return 0
    fi
    apt_install prometheus prometheus
    echo "peers: installed $installed ($(promtool --version 2>&1 | head -n 1))"
}

install_node_peer() {
    if ! command -v npm >/dev/null 2>&1; then
        echo "peers: npm is not installed: the Node ws peer tests will not run" >&2
        return 0
    fi
    # npm ci rewrites node_modules/.package-lock.json, so its age says when the install last ran.
    if [ -f node_modules/.package-lock.json ] && [ ! package-lock.json -nt node_modules/.package-lock.json ]; then
        return 0
    fi
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules/.package-lock.json
}

install_nginx
install_redis
install_proxies
install_promtool
install_node_peer
