#!/usr/bin/env bash
# Measures one default `adhoc` run (12 λ, 100 epochs) on a fresh local stack:
# seconds from trigger to COMPLETED, and RSS of each stack service with all it started
# (the flow-run process included), idle and peak. Leaves no process behind.
#   infra/measure-adhoc.sh [state dir, default /tmp/wd-measure] [prefect port] [mlflow port]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
state="${1:-/tmp/wd-measure}"; prefect_port="${2:-4200}"; mlflow_port="${3:-5000}"
cli=.venv/bin/wd-pipeline

rss() {  # MiB per service (process tree), one line each, then the total
  .venv/bin/python - "$state" <<'PY'
import json, subprocess, sys
services = json.load(open(f"{sys.argv[1]}/stack.json"))["services"]
rows = [line.split() for line in subprocess.run(["ps", "-eo", "pid=,ppid=,rss="], capture_output=True, text=True).stdout.splitlines()]
parent = {int(p): int(pp) for p, pp, _ in rows}
kib = {int(p): int(r) for p, _, r in rows}
def tree(root):
    return [root] + [p for c, pp in parent.items() if pp == root for p in tree(c)]
sizes = {s["name"]: sum(kib.get(p, 0) for p in tree(s["pid"])) / 1024 for s in services}
print(" ".join(f"{name}={mib:.0f}" for name, mib in sizes.items()), f"total={sum(sizes.values()):.0f} MiB")
PY
}

rm -rf "$state"
$cli stack up --state-dir "$state" --prefect-port "$prefect_port" --mlflow-port "$mlflow_port"
trap '$cli stack down --state-dir "$state"' EXIT
$cli deploy --state-dir "$state" >/dev/null
eval "$($cli stack env --state-dir "$state")"
echo "idle: $(rss)"

start=$(date +%s.%N)
.venv/bin/prefect deployment run 'weight-decay-pipeline/adhoc' --watch --watch-interval 1 >"$state/run.log" 2>&1 &
run=$!
peak=0
while kill -0 "$run" 2>/dev/null; do
  line=$(rss); total=${line##*total=}; total=${total%% *}
  [ "$total" -gt "$peak" ] && { peak=$total; peak_line=$line; }
  sleep 2
done
wait "$run"
echo "trigger -> COMPLETED: $(.venv/bin/python -c "import time; print(round(time.time() - $start, 1))") s"
echo "peak: $peak_line"
