#!/usr/bin/env bash
# bench-gogc.sh: healthgate's CPU per call and memory under GC settings,
# from the bench's unary-c50 workload (bench/, healthgate pinned to CPU 0).
#
#   scripts/bench-gogc.sh                 # GOGC 100, 200 and 400
#   scripts/bench-gogc.sh 400 400:24MiB   # GOGC[:GOMEMLIMIT]
#   ROUNDS=5 REPS=2 scripts/bench-gogc.sh
#
# Each round runs every setting once, REPS measured windows each, so that
# the noise of a shared machine falls on all settings alike; the table has
# medians over all windows and over the quieter half of them (by the other
# load that the bench itself records).
#
# GOGC and GOMEMLIMIT reach healthgate through the bench runner's
# environment, which every process it starts inherits (the backend and the
# load generator too: they run on the other CPU and do not count in
# healthgate's CPU per call). GODEBUG=gctrace=1 makes healthgate log each GC,
# whence its heap figures (in whole MiB) and the GC's own CPU time (the
# "ms cpu" of each cycle, over the calls of the windows and their warm-ups);
# its RSS and RssAnon (RSS less the executable's file pages, some 14 MiB)
# are sampled from /proc every 100 ms.
set -euo pipefail
cd "$(dirname "$0")/../bench"
rounds=${ROUNDS:-3}
reps=${REPS:-2}
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(100 200 400)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for round in $(seq "$rounds"); do
	for s in "${settings[@]}"; do
		gogc=${s%%:*}
		limit=
		[[ $s == *:* ]] && limit=${s#*:}
		out="$work/$round-${s//:/-}"
		mkdir -p "$out"
		envs=(GOGC="$gogc" GODEBUG=gctrace=1)
		[ -n "$limit" ] && envs+=(GOMEMLIMIT="$limit")
		echo "round $round/$rounds: $s" >&2
		env "${envs[@]}" go run ./cmd/bench -mode quick -peers healthgate -workloads unary-c50 \
			-reps "$reps" -keep-tmp -out "$out" >"$out/stdout" 2>"$out/stderr" &
		gorun=$!
		maxrss=0
		hwm=0
		startrss=0
		maxanon=0
		while kill -0 "$gorun" 2>/dev/null; do
			# go run -> bench runner -> healthgate
			for r in $(pgrep -P "$gorun" -x bench || true); do
				for hg in $(pgrep -P "$r" -x healthgate || true); do
					st=$(cat "/proc/$hg/status" 2>/dev/null || true)
					rss=$(awk '/^VmRSS:/ {print $2}' <<<"$st")
					h=$(awk '/^VmHWM:/ {print $2}' <<<"$st")
					anon=$(awk '/^RssAnon:/ {print $2}' <<<"$st")
					[ -n "$anon" ] && [ "$anon" -gt "$maxanon" ] && maxanon=$anon
					[ -n "$rss" ] && [ "$startrss" -eq 0 ] && startrss=$rss
					[ -n "$rss" ] && [ "$rss" -gt "$maxrss" ] && maxrss=$rss
					[ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
				done
			done
			sleep 0.1
		done
		if ! wait "$gorun"; then
			echo "bench failed for $s:" >&2
			tail -5 "$out/stderr" >&2
			continue
		fi
		tmp=$(sed -n 's/^configs and logs kept in //p' "$out/stderr")
		cat "$tmp"/[0-9][0-9][0-9]-healthgate.log >"$out/healthgate.log"
		rm -rf "$tmp"
		echo "$maxrss $hwm $startrss $maxanon" >"$out/rss"
	done
done

python3 - "$work" "$reps" "${settings[@]}" <<'PY'
import glob, json, os, re, statistics, sys
work, reps, settings = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"| GC setting | proxy CPU-µs/RPC, median (quieter half) | QPS, median | GCs per 1k RPC | GC CPU-µs/RPC (gctrace) | live heap MiB | heap goal MiB | RSS MiB at start | RSS (anon) MiB, max under load | 1.5 × live + 20 MiB | windows | other load, median % of a core |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in settings:
    runs, live, goal, gcs, gccpu, ops, rss, rss0, anon = [], [], [], 0, 0.0, 0, [], [], []
    for d in glob.glob(f"{work}/*-{s.replace(':', '-')}"):
        rs = [json.loads(l) for f in glob.glob(d + "/*.jsonl") for l in open(f)]
        rs = [r for r in rs if r.get("peer") == "healthgate" and "cpu" in r]
        runs += rs
        # warm-up plus window, per window: the calls the GCs paid for.
        ops += sum(r["ops"] * (r["warmup_sec"] + r["window_sec"]) / r["window_sec"] for r in rs)
        if os.path.exists(d + "/healthgate.log"):
            for l in open(d + "/healthgate.log"):
                m = re.match(r"gc \d+ @[\d.]+s \d+%: \S+ ms clock, (\S+) ms cpu, (\d+)->(\d+)->(\d+) MB, (\d+) MB goal", l)
                if m:
                    gcs += 1
                    gccpu += sum(float(x) for x in re.split(r"[+/]", m.group(1)))
                    live.append(int(m.group(4)))
                    goal.append(int(m.group(5)))
        if os.path.exists(d + "/rss"):
            f = open(d + "/rss").read().split()
            rss.append(int(f[0]) / 1024)
            rss0.append(int(f[2]) / 1024)
            anon.append(int(f[3]) / 1024)
    if not runs:
        print(f"| {s} | failed |")
        continue
    runs.sort(key=lambda r: r.get("other_cpu_percent", 0))
    quiet = runs[: max(1, len(runs) // 2)]
    cpu = statistics.median(r["cpu"]["proxy"]["us_per_op"] for r in runs)
    qcpu = statistics.median(r["cpu"]["proxy"]["us_per_op"] for r in quiet)
    qps = statistics.median(r["rate"] for r in runs)
    ml = statistics.median(live) if live else float("nan")
    mg = statistics.median(goal) if goal else float("nan")
    other = statistics.median(r.get("other_cpu_percent", 0) for r in runs)
    print(f"| {s} | {cpu:.1f} ({qcpu:.1f}) | {qps:.0f} | {1000 * gcs / ops:.1f} | {1000 * gccpu / ops:.1f} | {ml:.0f} | {mg:.0f} | {statistics.median(rss0):.1f} | {statistics.median(rss):.1f} ({statistics.median(anon):.1f}) | {1.5 * ml + 20:.1f} | {len(runs)} | {other:.0f} |")
PY
