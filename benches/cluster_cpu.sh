#!/usr/bin/env bash
# Where the CPU goes in the zstd scaling run of benches/cluster.sh: the same tasks on one
# emulated host (core 0), then on two (cores 0 and 1), sampled by `perf record -a`
# (root; Debian's linux-perf). Prints CPU milliseconds per task by what ran, for each.
#
# Throughput on two hosts is at most 2 x (one host's CPU per task) / (two hosts' CPU
# per task): the ceiling the cost of crossing hosts leaves, whatever the scheduling.
# Per-task figures are steadier than throughput on a noisy VM (they do not count the
# time a neighbour took the core), so the ceiling is a fairer check of a change to the
# crossing than one throughput ratio is.
#
#   benches/cluster_cpu.sh [TASKS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-800}
rounds=${2:-3}
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
cargo bench --features mpi --bench cluster --no-run 2>/dev/null
bin=$(ls -t target/release/deps/cluster-* | grep -v '\.d$' | head -1)
hosts=tests/mpi/hosts.sh
data=$(mktemp -d)
trap '$hosts down >/dev/null 2>&1 || true; rm -rf "$data"' EXIT
$hosts up 2 >/dev/null
launch() { # HOSTS NP: the zstd run under mpiexec
  mpiexec -launcher rsh -launcher-exec "$PWD/tests/mpi/enter" -iface rpbr0 -hosts "$1" -n "$2" "$bin" zstd "$n"
}
# A sample every 100 µs of CPU time on each core, idle cores included (their samples
# are the idle task's, left out below).
period_ns=100000
account() { # NAME HOSTS NP
  perf record -q -e cpu-clock -c $period_ns -a -o "$data/perf" -- bash -c "$(declare -f launch); bin=$bin n=$n launch $2 $3" |
    awk '$1 == "zstd" {printf "%s MB/s  ", $2}' >&2
  perf report -i "$data/perf" --no-children --sort comm,dso,sym -g none -F sample,comm,dso,sym 2>/dev/null |
    awk -v name="$1" -v n="$n" -v ms="$period_ns" '
      /^#/ || NF < 4 { next }
      {
        samples = $1; comm = $2; dso = $3; sym = $0
        if (comm == "swapper") next                      # the idle task
        if (sym ~ /ZSTD_|HIST_|FSE_|HUF_/) k = "zstd"
        else if (sym ~ /_copy_(from|to)_iter|copy_user/) k = "kernel-copies"
        else if (dso ~ /kernel/) k = "kernel-rest"
        else if (sym ~ /mem(move|cpy)/) k = "memcpy"
        else if (dso ~ /libmpich|libuc[pts]/) k = "mpi"
        else if (dso ~ /^cluster-/) k = "ringpipe"
        else k = "other"
        by[k] += samples; total += samples
      }
      END {
        for (k in by) printf "%s %s %.3f\n", name, k, by[k] * ms / 1e6 / n
        printf "%s total %.3f\n", name, total * ms / 1e6 / n
      }' >>"$data/costs"
}
for round in $(seq "$rounds"); do
  echo -n "round $round: one host " >&2
  account one 10.77.0.1 1
  echo -n "two hosts " >&2
  account two 10.77.0.1,10.77.0.2 2
  echo >&2
done
awk '
  function median(s,   v, n, i, j, t) {
    n = split(s, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  { all[$1 " " $2] = all[$1 " " $2] " " $3; kinds[$2] = 1 }
  END {
    printf "CPU ms per 1 MiB zstd-3 task, medians:\n%-15s %8s %8s\n", "", "one host", "two hosts"
    split("zstd memcpy kernel-copies kernel-rest mpi ringpipe other total", order, " ")
    for (i = 1; i <= 8; i++) printf "%-15s %8.3f %8.3f\n", order[i], median(all["one " order[i]]), median(all["two " order[i]])
    printf "ceiling for two hosts: %.2fx one host\n", 2 * median(all["one total"]) / median(all["two total"])
  }' "$data/costs"
