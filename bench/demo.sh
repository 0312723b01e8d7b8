#!/bin/sh
# `make demo`: an offline walk-through.  Starts the bundled demo upstream
# (python -m apicache.harness.demo) and the daemon with ./apicache.toml on
# loopback, shows with curl a MISS then a HIT, an invalidation, then stops
# both.  Called by the Makefile with PY, TWISTD and APICACHE_API_KEY set.
set -eu

PY=${PY:-python3}
TWISTD=${TWISTD:-twistd}
APICACHE_API_KEY=${APICACHE_API_KEY:-dev-key-change-me}
export APICACHE_API_KEY

free_port() {
    "$PY" -c 'from apicache.harness.launchers import free_port; print(free_port())'
}
UPSTREAM_PORT=${DEMO_UPSTREAM_PORT:-$(free_port)}
PORT=${DEMO_PORT:-$(free_port)}
APICACHE_UPSTREAM_URL="http://127.0.0.1:$UPSTREAM_PORT"
export APICACHE_UPSTREAM_URL

LOG=$(mktemp "${TMPDIR:-/tmp}/apicache-demo.XXXXXX")
UPSTREAM_PID=
DAEMON_PID=
cleanup() {
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
    [ -n "$UPSTREAM_PID" ] && kill "$UPSTREAM_PID" 2>/dev/null || true
    rm -f "$LOG"
}
trap cleanup EXIT INT TERM

echo "== the demo upstream (answers after 50 ms) on port $UPSTREAM_PORT"
"$PY" -m apicache.harness.demo --port "$UPSTREAM_PORT" &
UPSTREAM_PID=$!

echo "== apicache with ./apicache.toml on port $PORT"
"$TWISTD" -n --pidfile= apicache --config apicache.toml \
    --listen "tcp:$PORT:interface=127.0.0.1" >"$LOG" 2>&1 &
DAEMON_PID=$!

tries=0
until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 200 ] || ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        echo "apicache did not start:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done

URL="http://127.0.0.1:$PORT/server/object(42)/header"
show() {
    echo
    printf '$ curl -sS -i'
    for arg in "$@"; do
        case "$arg" in
            -*) printf " %s" "$arg" ;;
            *) printf " '%s'" "$arg" ;;
        esac
    done
    echo
    curl -sS -i "$@"
    echo
}

show -H "api-key: $APICACHE_API_KEY" -H "org_id: acme" -H "authorization: Bearer demo-token" "$URL"
show -H "api-key: $APICACHE_API_KEY" -H "org_id: acme" -H "authorization: Bearer demo-token" "$URL"
show -X DELETE -H "api-key: $APICACHE_API_KEY" -H "org_id: acme" "$URL"
show -H "api-key: $APICACHE_API_KEY" -H "org_id: acme" -H "authorization: Bearer demo-token" "$URL"

echo
echo "== the daemon's last log lines (one JSON object each)"
tail -n 2 "$LOG"

echo
echo "== stopping"
# twistd exits by re-raising SIGTERM after an orderly shutdown
{ kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID"; } 2>/dev/null || true
DAEMON_PID=
{ kill "$UPSTREAM_PID"; wait "$UPSTREAM_PID"; } 2>/dev/null || true
UPSTREAM_PID=
echo "done"
