#!/usr/bin/env bash
# bench-gogc.sh: healthgate's CPU per call and memory under GC settings,
# from the bench's unary-c50 workload (bench/, healthgate pinned to CPU 0).
#
#   scripts/bench-gogc.sh                 # GOGC 100, 200 and 400
#   scripts/bench-gogc.sh 400 400:24MiB   # GOGC[:GOMEMLIMIT]
#   REPS=5 scripts/bench-gogc.sh
#
# GOGC and GOMEMLIMIT reach healthgate through the bench runner's
# environment, which every process it starts inherits (the backend and the
# load generator too: they run on the other CPU and do not count in
# healthgate's CPU per call). GODEBUG=gctrace=1 makes healthgate log each GC,
# whence its live heap; its RSS is sampled from /proc every 100 ms.
set -euo pipefail
cd "$(dirname "$0")/../bench"
reps=${REPS:-3}
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(100 200 400)

printf '| GC setting | proxy CPU-µs/RPC (median of %s) | QPS | GCs/s | live heap MiB (median) | heap goal MiB (median) | RSS MiB (max under load) | peak RSS MiB | 1.5 × live + 20 MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n' "$reps"
for s in "${settings[@]}"; do
	gogc=${s%%:*}
	limit=
	[[ $s == *:* ]] && limit=${s#*:}
	out=$(mktemp -d)
	envs=(GOGC="$gogc" GODEBUG=gctrace=1)
	[ -n "$limit" ] && envs+=(GOMEMLIMIT="$limit")
	env "${envs[@]}" go run ./cmd/bench -mode quick -peers healthgate -workloads unary-c50 \
		-reps "$reps" -keep-tmp -out "$out" >"$out/stdout" 2>"$out/stderr" &
	gorun=$!
	maxrss=0 hwm=0
	while kill -0 "$gorun" 2>/dev/null; do
		# go run -> bench runner -> healthgate
		for r in $(pgrep -P "$gorun" -x bench || true); do
			for hg in $(pgrep -P "$r" -x healthgate || true); do
				st=$(cat "/proc/$hg/status" 2>/dev/null || true)
				rss=$(awk '/^VmRSS:/ {print $2}' <<<"$st")
				h=$(awk '/^VmHWM:/ {print $2}' <<<"$st")
				[ -n "$rss" ] && [ "$rss" -gt "$maxrss" ] && maxrss=$rss
				[ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
			done
		done
		sleep 0.1
	done
	if ! wait "$gorun"; then
		echo "bench failed for $s; see $out" >&2
		continue
	fi
	tmp=$(sed -n 's/^configs and logs kept in //p' "$out/stderr")
	python3 - "$s" "$out" "$tmp" "$maxrss" "$hwm" <<'PY'
import glob, json, re, statistics, sys
setting, out, tmp, maxrss, hwm = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
runs = [json.loads(l) for f in glob.glob(out + "/*.jsonl") for l in open(f)]
runs = [r for r in runs if r.get("peer") == "healthgate" and "cpu" in r]
cpu = statistics.median(r["cpu"]["proxy"]["us_per_op"] for r in runs)
qps = statistics.median(r["rate"] for r in runs)
live, goal, at = [], [], []
for f in glob.glob(tmp + "/*-healthgate.log"):
    for l in open(f):
        m = re.match(r"gc \d+ @([\d.]+)s .* (\d+)->(\d+)->(\d+) MB, (\d+) MB goal", l)
        if m:
            at.append(float(m.group(1))); live.append(int(m.group(4))); goal.append(int(m.group(5)))
rate = (len(at) - 1) / (at[-1] - at[0]) if len(at) > 1 and at[-1] > at[0] else 0
ml = statistics.median(live) if live else float("nan")
print(f"| {setting} | {cpu:.1f} | {qps:.0f} | {rate:.0f} | {ml:.0f} | {statistics.median(goal) if goal else float('nan'):.0f} | {maxrss/1024:.1f} | {hwm/1024:.1f} | {1.5*ml+20:.1f} |")
PY
	rm -rf "$out" "$tmp"
done
