#!/usr/bin/env bash
# The local part of docs/cluster.md, end to end on one machine (and in CI):
#   1. PostgreSQL from Debian's packages (apt-get install postgresql), a fresh cluster on 127.0.0.1;
#   2. an MLflow tracking server with that PostgreSQL as its backend store;
#   3. a Ray head (`ray start --head`) with the Jobs API on 127.0.0.1;
#   4. `ray job submit` of the quickstart, tracked by that MLflow server;
#   5. an MLflow comparison of the methods' fronts, `pareto front`, and `pareto ui` pointed at the server.
# Everything binds 127.0.0.1 and is stopped on exit (only the processes this script started).
#
#   bash infra/local/runbook-local.sh                 # the full quickstart (a few minutes on 2 cores)
#   PARETO_RUNBOOK_QUICK=1 bash infra/local/runbook-local.sh    # a seconds-scale quickstart (CI)
#
# Environment: PARETO_RUNBOOK_DIR (work folder; default a new temp dir), PARETO_RUNBOOK_QUICK (1 = small model and
# few steps). Writes $PARETO_RUNBOOK_DIR/summary.json with what it checked.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${PARETO_RUNBOOK_DIR:-$(mktemp -d /tmp/pareto-runbook.XXXXXX)}"
mkdir -p "$WORK"
chmod 755 "$WORK"   # the postgres user must reach its data folder inside
PY="${PYTHON:-python}"
BIN="$(dirname "$(command -v "$PY")")"

# Loopback only, no telemetry, no hub; token auth off for this single-user local cluster (docs/cluster.md).
export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # URL, seconds
  local url="$1" deadline=$((SECONDS + $2))
  until "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null; do
    if (( SECONDS > deadline )); then echo "runbook: $url did not answer within $2 s" >&2; return 1; fi
    sleep 1
  done
}
log() { echo "== runbook: $*" >&2; }

PIDS=()        # process groups we started (setsid), stopped in reverse order
PG_DATA=""
cleanup() {
  local status=$?
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    kill -TERM -- "-${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [[ -n "$PG_DATA" ]]; then as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # a signal still runs cleanup (through the EXIT trap)

# ---- 1. PostgreSQL (Debian packages) -----------------------------------------------------------------------------
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [[ -z "$PG_BIN" || ! -x "$PG_BIN/initdb" ]]; then
  echo "runbook: PostgreSQL is not installed; run: apt-get install -y postgresql" >&2
  exit 3
fi
as_pg() {  # PostgreSQL refuses to run as root: use its own system user then
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
PG_PORT="$(free_port)"
PG_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
PG_DATA="$WORK/pg/data"
mkdir -p "$WORK/pg"
[[ "$(id -u)" == 0 ]] && chown postgres: "$WORK/pg"
echo "$PG_PASSWORD" > "$WORK/pg/pwfile"
[[ "$(id -u)" == 0 ]] && chown postgres: "$WORK/pg/pwfile"
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --pwfile="$WORK/pg/pwfile" --auth=scram-sha-256 -E UTF8 >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK/pg" start >/dev/null
export PGPASSWORD="$PG_PASSWORD"
psql_pg() { "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_pg -U postgres -d postgres -c "CREATE ROLE mlflow LOGIN PASSWORD '$PG_PASSWORD'"
psql_pg -U postgres -d postgres -c "CREATE DATABASE mlflow OWNER mlflow"
BACKEND="postgresql+psycopg2://mlflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow"

# ---- 2. MLflow server on PostgreSQL ------------------------------------------------------------------------------
MLFLOW_PORT="$(free_port)"
URI="http://127.0.0.1:$MLFLOW_PORT"
log "MLflow server at $URI (backend store: PostgreSQL, artifacts: $WORK/artifacts, proxied)"
setsid "$BIN/mlflow" server --backend-store-uri "$BACKEND" --artifacts-destination "$WORK/artifacts" \
  --serve-artifacts --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$WORK/mlflow.log" 2>&1 &
PIDS+=($!)
wait_http "$URI/health" 120

# ---- 3. Ray head (its own process group: stopping it leaves any other Ray on this machine alone) ---------------
RAY_PORT="$(free_port)"
DASH_PORT="$(free_port)"
log "Ray head on 127.0.0.1:$RAY_PORT, Jobs API on http://127.0.0.1:$DASH_PORT"
# Every port Ray would otherwise take by default gets a free one, so another Ray on this machine is no obstacle.
RAY_PORTS=()
for opt in node-manager-port object-manager-port runtime-env-agent-port dashboard-agent-grpc-port \
           dashboard-agent-listen-port metrics-export-port ray-client-server-port; do
  RAY_PORTS+=("--$opt=$(free_port)")
done
setsid "$BIN/ray" start --head --block --port="$RAY_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
  "${RAY_PORTS[@]}" --num-cpus=2 --disable-usage-stats --temp-dir="$WORK/ray" >"$WORK/ray.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$DASH_PORT/api/version" 120

# ---- 4. ray job submit of the quickstart -------------------------------------------------------------------------
OVERRIDES=(--set "tracking.uri=$URI")
if [[ "${PARETO_RUNBOOK_QUICK:-0}" == 1 ]]; then  # tests/configs/small.yaml's scale, on the quickstart config
  OVERRIDES+=(--set model.tiny.hidden_size=64 --set model.tiny.intermediate_size=128 --set model.tiny.num_heads=1
              --set model.tiny.vocab_size=512 --set model.tiny.sft_epochs=2 --set reward_model.epochs=20
              --set reward_model.min_accuracy=0.8 --set methods.panacea.max_steps=60 --set methods.panacea.eval_every=20
              --set methods.panacea.val_prompts=6 --set methods.per_weight_dpo.max_steps=10
              --set methods.per_weight_dpo.eval_every=10 --set methods.per_weight_dpo.val_prompts=6
              --set evaluation.grid_points=3 --set evaluation.n_prompts=12 --set evaluation.max_new_tokens=32
              --set "evaluation.reference_point=[-0.1, -0.1, -0.1]")
fi
log "ray job submit: python ray_jobs/train.py --config configs/quickstart.yaml ${OVERRIDES[*]}"
JOB_ID="pareto-runbook-$(date +%s)-$$"
JOBS=(--address "http://127.0.0.1:$DASH_PORT")
# The Jobs API answers before the head's job agent is up ("No available agent"): retry with the same id.
for attempt in $(seq 1 40); do
  if (cd "$ROOT" && "$BIN/ray" job submit "${JOBS[@]}" --no-wait --submission-id "$JOB_ID" --working-dir . \
      --runtime-env-json "{\"env_vars\": {\"PARETO_HOME\": \"$WORK/state\"}}" -- \
      python ray_jobs/train.py --config configs/quickstart.yaml "${OVERRIDES[@]}") >"$WORK/submit.log" 2>&1; then
    break
  fi
  if ! grep -q "No available agent" "$WORK/submit.log" || (( attempt == 40 )); then
    cat "$WORK/submit.log" >&2
    exit 1
  fi
  sleep 2
done
"$BIN/ray" job logs "${JOBS[@]}" --follow "$JOB_ID" | tee "$WORK/job.log"
STATUS="$("$PY" -c 'import sys; from ray.job_submission import JobSubmissionClient as C
print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)' "http://127.0.0.1:$DASH_PORT" "$JOB_ID" 2>/dev/null || true)"
log "job $JOB_ID: ${STATUS:-unknown}"
[[ "$STATUS" == SUCCEEDED ]] || { echo "runbook: the job did not succeed (status ${STATUS:-unknown})" >&2; exit 1; }

# ---- 5. compare in MLflow, read the front back, open the UI on the server ----------------------------------------
log "MLflow comparison of the methods (parent runs of experiment 'quickstart')"
"$PY" - "$URI" "$WORK/compare.json" <<'EOF'
import json, sys
import mlflow

uri, out = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(experiment_names=["quickstart"], filter_string="attributes.status = 'FINISHED'",
                          order_by=["attributes.start_time DESC"])
parents = runs[runs["tags.mlflow.parentRunId"].isna()] if "tags.mlflow.parentRunId" in runs else runs
row = parents.iloc[0]
# The parent run logs `<method>/hypervolume`; nested runs' columns (`oracle/...`) are empty on it.
methods = sorted(c.removeprefix("metrics.").split("/")[0] for c in parents.columns
                 if c.startswith("metrics.") and c.endswith("/hypervolume") and row[c] == row[c])
table = {m: {"hypervolume": float(row[f"metrics.{m}/hypervolume"]), "igd": float(row.get(f"metrics.{m}/igd", "nan"))}
         for m in methods}
print(f"run {row['run_id']}: " + ", ".join(f"{m} HV {v['hypervolume']:.4f} IGD {v['igd']:.4f}" for m, v in table.items()))
json.dump({"run_id": row["run_id"], "runs_in_experiment": int(len(runs)), "methods": table}, open(out, "w"))
EOF
"$BIN/pareto" front latest --experiment quickstart --tracking-uri "$URI" --json >"$WORK/front.json"
MLFLOW_ROWS="$(psql_pg -U mlflow -d mlflow -c "SELECT count(*) FROM runs")"
log "PostgreSQL holds $MLFLOW_ROWS MLflow run rows"

UI_PORT="$(free_port)"
setsid "$BIN/pareto" ui --tracking-uri "$URI" --port "$UI_PORT" >"$WORK/ui.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UI_PORT/_stcore/health" 90
log "pareto ui answered on http://127.0.0.1:$UI_PORT, reading $URI"

"$PY" - "$WORK" "$MLFLOW_ROWS" "$UI_PORT" "$URI" <<'EOF'
import json, sys
from pathlib import Path

work, rows, ui_port, uri = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
summary = {"tracking_uri": uri, "backend": "postgresql", "postgres_run_rows": rows, "ui_port": ui_port,
           "ui_health": 200, "compare": json.loads((work / "compare.json").read_text()),
           "front": json.loads((work / "front.json").read_text())}
(work / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"runbook ok: summary in {work / 'summary.json'}")
EOF
