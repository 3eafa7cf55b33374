# Sourced by the peer comparison scripts: start servers in the caller's shell and find their ports.
# Needs $out (log folder). Every server started with `launch` is stopped when the caller exits.
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT

launch() {  # launch NAME COMMAND...: start it in this shell, so the EXIT trap can stop it
  local name=$1; shift
  "$@" >"$out/$name.log" 2>&1 &
  pids+=($!)
}

port_of() {  # port_of NAME PID: wait for "ready on 127.0.0.1:PORT" in its log, print the port
  local name=$1 pid=$2 port
  for _ in $(seq 1 1200); do
    port=$(grep -oE 'ready on 127\.0\.0\.1:[0-9]+' "$out/$name.log" | head -1 | cut -d: -f2 || true)
    [ -n "$port" ] && { echo "$port"; return; }
    kill -0 "$pid" 2>/dev/null || { echo "$name failed to start:" >&2; tail -20 "$out/$name.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "$name did not start in time" >&2; exit 1
}

scratch_demo_repo() {  # set $demo (the demo models, built if need be) and $repo (an empty folder, removed at exit); needs $py
  demo=$($py -m server build-demo | tail -1)
  repo=$(mktemp -d)
  trap 'cleanup; rm -rf "$repo"' EXIT
}

rss_kib() {  # rss_kib PID: resident memory of PID and all its descendants, KiB
  local pid=$1 total=0 child
  total=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  for child in $(pgrep -P "$pid" || true); do
    total=$((total + $(rss_kib "$child")))
  done
  echo "$total"
}
