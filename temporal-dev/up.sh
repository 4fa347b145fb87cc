#!/usr/bin/env bash
# Bring the whole service up on one machine: Temporal dev server (persistent SQLite),
# one worker per role, the API. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
export AE_DATA_DIR=${AE_DATA_DIR:-$PWD/data}
# The dev server has no authentication: its gRPC port, its HTTP API and its Web UI stay
# on loopback (README, Security: what a real deployment must add).
TEMPORAL_IP=127.0.0.1
TEMPORAL_PORT=${TEMPORAL_PORT:-7233}
TEMPORAL_UI_PORT=${TEMPORAL_UI_PORT:-8233}
# The Web UI is served through temporal-dev/ui_guard.py: loopback Host names only, and
# read-only unless AE_TEMPORAL_UI_WRITES=enabled. The UI itself listens on a free
# loopback port that only the guard uses.
AE_TEMPORAL_UI_WRITES=${AE_TEMPORAL_UI_WRITES:-disabled}
TEMPORAL_UI_INNER_PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API_HOST=${API_HOST:-127.0.0.1}
API_PORT=${API_PORT:-8000}
export TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-$TEMPORAL_IP:$TEMPORAL_PORT}
mkdir -p "$AE_DATA_DIR/logs"

# API keys (api/auth.py). Auth is on by default: keys not given in the environment are
# generated once and kept in $AE_DATA_DIR/api-keys.env (mode 600). AE_AUTH=disabled turns
# auth off, for local development only.
export AE_AUTH=${AE_AUTH:-enabled}
KEY_FILE="$AE_DATA_DIR/api-keys.env"
if [[ "$AE_AUTH" != disabled && -z "${AE_API_KEYS:-}${AE_INTERNAL_API_KEYS:-}" ]]; then
  if [[ ! -f "$KEY_FILE" ]]; then
    new_key() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))'; }
    (umask 077; printf 'AE_API_KEYS=%s\nAE_INTERNAL_API_KEYS=%s\n' "$(new_key)" "$(new_key)" >"$KEY_FILE")
  fi
  set -a; source "$KEY_FILE"; set +a
fi

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping: API, workers (graceful), Temporal dev server"
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

wait_for_port() {  # host port name
  for _ in $(seq 1 120); do
    if (echo >"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "$3 did not open $1:$2; see $AE_DATA_DIR/logs" >&2
  exit 1
}

# its search attributes, its state file and SQLite's settings (deploy/temporal_dev.py)
mapfile -t DEV_SERVER_FLAGS < <("$VENV/bin/python" -m deploy.temporal_dev "$AE_DATA_DIR/temporal.db")
"$VENV/bin/temporal" server start-dev \
  --ip "$TEMPORAL_IP" --ui-ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$TEMPORAL_UI_INNER_PORT" \
  --ui-disable-news-fetch "${DEV_SERVER_FLAGS[@]}" \
  --log-level warn >"$AE_DATA_DIR/logs/temporal.log" 2>&1 &
pids+=($!)
wait_for_port "$TEMPORAL_IP" "$TEMPORAL_PORT" "Temporal"

UI_WRITES_FLAG=()
[[ "$AE_TEMPORAL_UI_WRITES" == enabled ]] && UI_WRITES_FLAG=(--allow-writes)
"$VENV/bin/python" temporal-dev/ui_guard.py --port "$TEMPORAL_UI_PORT" \
  --upstream "127.0.0.1:$TEMPORAL_UI_INNER_PORT" "${UI_WRITES_FLAG[@]}" \
  >"$AE_DATA_DIR/logs/temporal-ui-guard.log" 2>&1 &
pids+=($!)

# Prometheus: one scrape endpoint per process, on loopback (AE_METRICS_HOST to change).
AE_API_METRICS_PORT=${AE_API_METRICS_PORT:-9464}
declare -A WORKER_METRICS_PORT=(
  [orchestration]=${AE_ORCHESTRATION_METRICS_PORT:-9465}
  [cpu]=${AE_CPU_METRICS_PORT:-9466}
  [gpu]=${AE_GPU_METRICS_PORT:-9467}
)
for role in orchestration cpu gpu; do
  AE_METRICS_PORT="${WORKER_METRICS_PORT[$role]}" \
    "$VENV/bin/python" -m worker --role "$role" >"$AE_DATA_DIR/logs/worker-$role.log" 2>&1 &
  pids+=($!)
done

# api/server.py: uvicorn with time limits for slow clients and a connection cap.
API_HOST="$API_HOST" API_PORT="$API_PORT" AE_METRICS_PORT="$AE_API_METRICS_PORT" \
  "$VENV/bin/python" -m api.server \
  >"$AE_DATA_DIR/logs/api.log" 2>&1 &
pids+=($!)
wait_for_port "$API_HOST" "$API_PORT" "The API"
wait_for_port 127.0.0.1 "$TEMPORAL_UI_PORT" "The Temporal UI guard"

if [[ "$AE_AUTH" == disabled ]]; then
  AUTH_MSG="  WARNING: AE_AUTH=disabled: every operation is open to anyone who can reach the API.
           Use this for local development only."
  AUTH_HEADER=""
else
  AUTH_MSG="  API key:          ${AE_API_KEYS%%,*}   (external operations)
  internal key:     ${AE_INTERNAL_API_KEYS%%,*}   (/internal/ operations)
  (kept in $KEY_FILE unless given in AE_API_KEYS / AE_INTERNAL_API_KEYS)"
  AUTH_HEADER="-H 'Authorization: Bearer ${AE_API_KEYS%%,*}' "
fi

cat <<MSG

Attribution Engine is up.
  API:              http://$API_HOST:$API_PORT   (docs: http://$API_HOST:$API_PORT/docs)
  Temporal Web UI:  http://$TEMPORAL_IP:$TEMPORAL_UI_PORT   (write actions: $AE_TEMPORAL_UI_WRITES)
  Temporal gRPC:    $TEMPORAL_ADDRESS
  data and logs:    $AE_DATA_DIR
  metrics:          API http://127.0.0.1:$AE_API_METRICS_PORT/metrics, workers: orchestration :${WORKER_METRICS_PORT[orchestration]}, cpu :${WORKER_METRICS_PORT[cpu]}, gpu :${WORKER_METRICS_PORT[gpu]} (same path)
$AUTH_MSG
Try:  curl ${AUTH_HEADER}-F sample=@/usr/bin/ls http://$API_HOST:$API_PORT/samples
Ctrl-C stops everything.
MSG

# Any component exiting brings the rest down: a half-running service is worse than none.
wait -n
echo "a component exited; see $AE_DATA_DIR/logs" >&2
