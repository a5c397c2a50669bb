#!/usr/bin/env bash
# Standard benchmark suite (make bench): builds revenprox, nats-server and revenprox-bench,
# runs idle, fanout, connect-with-auth and 3-node cluster scenarios against RevenProx and the
# idle and fanout scenarios against a NATS server's WebSocket listener, BENCH_RUNS times each
# (interleaved, so every ratio compares runs made minutes apart), and rewrites the generated
# block of docs/benchmarks.md with the medians.
#
# Every count is an environment variable, so a quick smoke run is e.g.
#   BENCH_RUNS=1 BENCH_IDLE_CONNS=500 BENCH_FANOUT_SUBS=300 BENCH_FANOUT_DURATION=2s \
#   BENCH_CONNECT_CONNS=500 BENCH_CONNECT_TOKENS=50 BENCH_CLUSTER_SUBS=300 \
#   BENCH_DOC=/tmp/benchmarks.md scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
RUNS=${BENCH_RUNS:-3}
BIN=${BENCH_BIN:-bin}
DOC=${BENCH_DOC:-docs/benchmarks.md}
PORT=${BENCH_PORT_BASE:-19000}          # uses PORT .. PORT+99 on 127.0.0.1
PER_WORKER=${BENCH_PER_WORKER:-9000}    # connections per generator process
IDLE_CONNS=${BENCH_IDLE_CONNS:-18000}
IDLE_HOLD=${BENCH_IDLE_HOLD:-3s}
FANOUT_SUBS=${BENCH_FANOUT_SUBS:-10000}
FANOUT_TOPICS=${BENCH_FANOUT_TOPICS:-100}
FANOUT_PUBS=${BENCH_FANOUT_PUBS:-10}
FANOUT_RATE=${BENCH_FANOUT_RATE:-125}   # publishes/s (ramp: of step 1); x subscribers per topic = deliveries/s
FANOUT_SIZE=${BENCH_FANOUT_SIZE:-100}
FANOUT_DURATION=${BENCH_FANOUT_DURATION:-4s}     # per ramp step
FANOUT_RAMP=${BENCH_FANOUT_RAMP:-1}               # 1: saturation search from FANOUT_RATE; 0: one fixed rate
RAMP_FACTOR=${BENCH_RAMP_FACTOR:-1.5}
RAMP_STEPS=${BENCH_RAMP_STEPS:-7}       # 125 .. 1424 publishes/s = 12.5k .. 142k deliveries/s
CONNECT_CONNS=${BENCH_CONNECT_CONNS:-20000}
CONNECT_TOKENS=${BENCH_CONNECT_TOKENS:-2000}
CONNECT_CONCURRENCY=${BENCH_CONNECT_CONCURRENCY:-200}
CLUSTER_SUBS=${BENCH_CLUSTER_SUBS:-3000}
CLUSTER_TOPICS=${BENCH_CLUSTER_TOPICS:-100}
CLUSTER_PUBS=${BENCH_CLUSTER_PUBS:-10}
CLUSTER_RATE=${BENCH_CLUSTER_RATE:-200}
CLUSTER_DURATION=${BENCH_CLUSTER_DURATION:-8s}
SUITE_TIMEOUT=${BENCH_TIMEOUT:-900}     # seconds; the whole suite is killed beyond it
PROFILE_RUNS=${BENCH_PROFILE_RUNS:-1}   # server profiles (CPU per window, heap, goroutines) in the first N runs
ADMIN=127.0.0.1:$((PORT+70))            # admin listener of the single-node RevenProx runs
ADMIN_KEY=bench-admin-key               # loopback only; the benchmark's nodes live for one run

RESULTS=$(mktemp -d /tmp/revenprox-bench.XXXXXX)
WORK=$RESULTS/work
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

log() { echo "bench.sh: $*" >&2; }
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log "building into $BIN/"
mkdir -p "$BIN"
"$GO" build -o "$BIN/revenprox" ./cmd/revenprox
"$GO" build -o "$BIN/revenprox-bench" ./cmd/revenprox-bench
"$GO" build -o "$BIN/nats-server" github.com/nats-io/nats-server/v2
BENCH=$BIN/revenprox-bench

# wait_http URL: poll until it answers 200 (at most 20 s).
wait_http() {
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $1"; return 1
}

# start_revenprox NAME LISTEN EXTRA_YAML: starts a node, sets NODE_PID.
start_revenprox() {
  local name=$1 listen=$2 extra=$3
  cat > "$WORK/$name.yaml" <<YAML
node_id: $name
listen: "$listen"
log: {level: warn, format: text}
limits: {max_connections: 100000, ip_connect_rate: 0, publish_rate: 0}
$extra
YAML
  case "$extra" in *cluster:*) ;; *) echo "admin: {listen: \"$ADMIN\", api_key: \"$ADMIN_KEY\"}" >>"$WORK/$name.yaml" ;; esac
  "$BIN/revenprox" -c "$WORK/$name.yaml" >>"$WORK/$name.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
}

start_nats() {
  cat > "$WORK/nats.conf" <<CONF
listen: "127.0.0.1:$((PORT+40))"
http: "127.0.0.1:$((PORT+41))"
max_connections: 100000
websocket { listen: "127.0.0.1:$((PORT+42))", no_tls: true }
CONF
  "$BIN/nats-server" -c "$WORK/nats.conf" >>"$WORK/nats.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_http "http://127.0.0.1:$((PORT+41))/varz"
}

# bench LABEL RUN ARGS...: one generator run; a failed run is logged and leaves no result.
# Every generator run has its own hard timeout; past the suite deadline runs are skipped.
bench() {
  local label=$1 run=$2; shift 2
  if [ $(( $(date +%s) - START )) -gt "$SUITE_TIMEOUT" ]; then
    log "suite deadline (${SUITE_TIMEOUT}s) passed: skipping $label run $run"; return 0
  fi
  log "run $run: $label"
  if ! "$BENCH" "$@" --per-worker "$PER_WORKER" --out "$RESULTS/$label.$run.json" >"$WORK/$label.$run.txt" 2>"$WORK/$label.$run.err"; then
    log "$label run $run failed (see below); continuing"
    tail -5 "$WORK/$label.$run.err" >&2 || true
  fi
  grep -E 'deliveries/s|per connection|connect rate|sustained|CPU split|verdict' "$WORK/$label.$run.txt" | sed 's/^/    /' >&2 || true
}

anon='auth: {allow_anonymous: true}'
RP=127.0.0.1:$((PORT+80))
NATS_WS=ws://127.0.0.1:$((PORT+42))
FANOUT_ARGS=(--subs "$FANOUT_SUBS" --topics "$FANOUT_TOPICS" --pubs "$FANOUT_PUBS" --rate "$FANOUT_RATE" --size "$FANOUT_SIZE" --duration "$FANOUT_DURATION" --quiet)
[ "$FANOUT_RAMP" = 1 ] && FANOUT_ARGS+=(--ramp --ramp-factor "$RAMP_FACTOR" --ramp-steps "$RAMP_STEPS")
# profile LABEL RUN: profiler flags for a single-node RevenProx run (first PROFILE_RUNS runs).
profile() {
  if [ "$2" -le "$PROFILE_RUNS" ]; then
    echo --admin-url "http://$ADMIN" --admin-key "$ADMIN_KEY" --profile "$RESULTS/profiles/$1.$2"
  fi
}
mkdir -p "$RESULTS/profiles"
IDLE_ARGS=(--conns "$IDLE_CONNS" --topics 100 --duration "$IDLE_HOLD" --quiet)

# The webhook for the connect storm: a fresh one per run, so its call count is that run's.
WEBHOOK=127.0.0.1:$((PORT+90))

for run in $(seq 1 "$RUNS"); do
  # idle: RevenProx, then NATS, each on a fresh server.
  start_revenprox bench-idle "$RP" "$anon"; wait_http "http://$RP/ready"
  # shellcheck disable=SC2046
  bench idle-revenprox "$run" idle --url "ws://$RP/ws" --server-pid "$NODE_PID" "${IDLE_ARGS[@]}" $(profile idle "$run")
  cleanup
  start_nats
  bench idle-nats "$run" idle --target nats --url "$NATS_WS" --server-pid "$NODE_PID" "${IDLE_ARGS[@]}"
  cleanup
  # fanout
  start_revenprox bench-fanout "$RP" "$anon"; wait_http "http://$RP/ready"
  # shellcheck disable=SC2046
  bench fanout-revenprox "$run" fanout --url "ws://$RP/ws" --server-pid "$NODE_PID" "${FANOUT_ARGS[@]}" $(profile fanout "$run")
  cleanup
  start_nats
  bench fanout-nats "$run" fanout --target nats --url "$NATS_WS" --server-pid "$NODE_PID" --nats-varz "http://127.0.0.1:$((PORT+41))/varz" "${FANOUT_ARGS[@]}"
  cleanup
  # connect storm with webhook auth (warm-up connects once per token, not measured)
  "$BENCH" webhook --listen "$WEBHOOK" --max-life "${SUITE_TIMEOUT}s" 2>>"$WORK/webhook.log" &
  PIDS+=("$!"); wait_http "http://$WEBHOOK/count"
  start_revenprox bench-connect "$RP" "auth: {webhook_url: \"http://$WEBHOOK/verify\"}"; wait_http "http://$RP/ready"
  # shellcheck disable=SC2046
  bench connect-revenprox "$run" connect --url "ws://$RP/ws" --server-pid "$NODE_PID" --conns "$CONNECT_CONNS" --tokens "$CONNECT_TOKENS" --concurrency "$CONNECT_CONCURRENCY" --duration 60s --quiet $(profile connect "$run") --profile-seconds 4
  echo "run $run: $(curl -fsS "http://$WEBHOOK/count" || echo '?') webhook calls for $CONNECT_TOKENS tokens" >>"$RESULTS/webhook_calls.raw"
  cleanup
  # 3-node cluster: subscribers spread over all nodes, publishers on the first.
  CL_PIDS=()
  for n in 1 2 3; do
    peers=""
    for m in 1 2 3; do [ "$m" != "$n" ] && peers="$peers\"nats-route://127.0.0.1:$((PORT+50+m))\","; done
    start_revenprox "bench-c$n" "127.0.0.1:$((PORT+60+n))" "$anon
cluster: {listen: \"127.0.0.1:$((PORT+50+n))\", peers: [${peers%,}]}"
    CL_PIDS+=("$NODE_PID")
  done
  for n in 1 2 3; do wait_http "http://127.0.0.1:$((PORT+60+n))/ready"; done
  bench cluster-revenprox "$run" cluster \
    --url "ws://127.0.0.1:$((PORT+61))/ws,ws://127.0.0.1:$((PORT+62))/ws,ws://127.0.0.1:$((PORT+63))/ws" \
    --server-pid "$(IFS=,; echo "${CL_PIDS[*]}")" --settle 2s \
    --subs "$CLUSTER_SUBS" --topics "$CLUSTER_TOPICS" --pubs "$CLUSTER_PUBS" --rate "$CLUSTER_RATE" --size "$FANOUT_SIZE" --duration "$CLUSTER_DURATION" --quiet
  cleanup
done

# Describe the run for the document.
{
  grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*:\s*/CPU: /'
  echo "nproc: $(nproc)"
  free -m | sed 's/^/  /'
  echo "kernel: $(uname -r)"
  echo "go: $("$GO" version)"
  echo "open files per process: $(ulimit -n) (soft) / $(ulimit -Hn) (hard)"
  echo "load average at the start: $LOAD_START"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/machine.txt"
echo "make bench   # = scripts/bench.sh" >"$RESULTS/command.txt"
cat >"$RESULTS/params.txt" <<P
BENCH_RUNS=$RUNS BENCH_PER_WORKER=$PER_WORKER
BENCH_IDLE_CONNS=$IDLE_CONNS BENCH_IDLE_HOLD=$IDLE_HOLD
BENCH_FANOUT_SUBS=$FANOUT_SUBS BENCH_FANOUT_TOPICS=$FANOUT_TOPICS BENCH_FANOUT_PUBS=$FANOUT_PUBS BENCH_FANOUT_RATE=$FANOUT_RATE BENCH_FANOUT_SIZE=$FANOUT_SIZE BENCH_FANOUT_DURATION=$FANOUT_DURATION
BENCH_FANOUT_RAMP=$FANOUT_RAMP BENCH_RAMP_FACTOR=$RAMP_FACTOR BENCH_RAMP_STEPS=$RAMP_STEPS
BENCH_CONNECT_CONNS=$CONNECT_CONNS BENCH_CONNECT_TOKENS=$CONNECT_TOKENS BENCH_CONNECT_CONCURRENCY=$CONNECT_CONCURRENCY
BENCH_CLUSTER_SUBS=$CLUSTER_SUBS BENCH_CLUSTER_TOPICS=$CLUSTER_TOPICS BENCH_CLUSTER_PUBS=$CLUSTER_PUBS BENCH_CLUSTER_RATE=$CLUSTER_RATE BENCH_CLUSTER_DURATION=$CLUSTER_DURATION
suite wall time: $(( $(date +%s) - START )) s
P
date -u '+%Y-%m-%d %H:%M UTC' >"$RESULTS/date.txt"
echo "$IDLE_CONNS connections opened (each subscribes to one of 100 topics), held for $IDLE_HOLD, on a fresh server each run; generator processes of at most $PER_WORKER connections each." >"$RESULTS/idle.txt"
if [ "$FANOUT_RAMP" = 1 ]; then
  echo "$FANOUT_SUBS subscribers over $FANOUT_TOPICS topics, $FANOUT_PUBS publishers, $FANOUT_SIZE-byte payloads, in a saturation ramp over the same connections: step 1 publishes $FANOUT_RATE/s in total (offered $((FANOUT_RATE * FANOUT_SUBS / FANOUT_TOPICS)) deliveries/s), every next step ×$RAMP_FACTOR, each step $FANOUT_DURATION, at most $RAMP_STEPS steps; the ramp stops at the first step with a loss, a server drop or close, publishers more than 10% behind schedule, or p99 > 100 ms. Both servers ramp in the same invocation, minutes apart." >"$RESULTS/fanout.txt"
else
  echo "$FANOUT_SUBS subscribers over $FANOUT_TOPICS topics, $FANOUT_PUBS publishers at $FANOUT_RATE publishes/s in total, $FANOUT_SIZE-byte payloads, for $FANOUT_DURATION (offered: $FANOUT_RATE × $((FANOUT_SUBS / FANOUT_TOPICS)) = $((FANOUT_RATE * FANOUT_SUBS / FANOUT_TOPICS)) deliveries/s)." >"$RESULTS/fanout.txt"
fi
echo "$CONNECT_CONNS connections over $CONNECT_TOKENS distinct tokens at concurrency $CONNECT_CONCURRENCY against a node whose webhook (\`revenprox-bench webhook\`) allows everything; one unmeasured warm-up connect per token first, so the cache is warm; each connection closes as soon as it is welcomed." >"$RESULTS/connect.txt"
echo "3 nodes on loopback, full route mesh; $CLUSTER_SUBS subscribers spread evenly over the nodes, $CLUSTER_PUBS publishers on node 1 at $CLUSTER_RATE publishes/s; same-node vs cross-node latency from the same run." >"$RESULTS/cluster.txt"
[ -f "$RESULTS/webhook_calls.raw" ] && paste -sd';' "$RESULTS/webhook_calls.raw" >"$RESULTS/webhook_calls.txt"

# The top of every server profile, as text for the document (run 1 only by default).
for f in "$RESULTS"/profiles/*.cpu.pprof; do
  [ -f "$f" ] && "$GO" tool pprof -top -nodecount=15 "$BIN/revenprox" "$f" >"${f%.pprof}.top.txt" 2>/dev/null || true
done
for f in "$RESULTS"/profiles/*.heap.pprof; do
  [ -f "$f" ] && "$GO" tool pprof -sample_index=inuse_space -top -nodecount=12 "$BIN/revenprox" "$f" >"${f%.pprof}.top.txt" 2>/dev/null || true
done

"$BENCH" report --dir "$RESULTS" --out "$DOC"
log "wrote $DOC in $(( $(date +%s) - START )) s (raw results in $RESULTS)"
