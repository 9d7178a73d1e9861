#!/usr/bin/env bash
# The pool across hosts against its peers, on two hosts emulated with network
# namespaces (root; MPICH; mpi4py for the Python peer, optional:
# `pip install --no-binary mpi4py mpi4py`). Each round runs every figure once, peers
# beside ringpipe; the rounds alternate, and the medians and their ratios are what count
# (these machines are noisy: one figure alone moves by 30%).
#
#   ROUNDS=3 benches/cluster.sh [TASKS_1MIB] [TASKS_64B] [TASKS_ZSTD]
set -euo pipefail
cd "$(dirname "$0")/.."
big=${1:-3000}
tiny=${2:-600000}
zstd=${3:-800}
rounds=${ROUNDS:-3}
cargo bench --features mpi --bench cluster --no-run 2>/dev/null
bin=$(ls -t target/release/deps/cluster-* | grep -v '\.d$' | head -1)
hosts=tests/mpi/hosts.sh
trap '$hosts down >/dev/null 2>&1 || true' EXIT
$hosts up 2 >/dev/null
run() {
  mpiexec -launcher rsh -launcher-exec "$PWD/tests/mpi/enter" -iface rpbr0 \
    -hosts 10.77.0.1,10.77.0.2 -n 2 "$@"
}
run1() { # HOST CMD...
  local host=$1
  shift
  mpiexec -launcher rsh -launcher-exec "$PWD/tests/mpi/enter" -iface rpbr0 -hosts "$host" -n 1 "$@"
}
# UCX's own TCP segment sizes (8 KiB to send, 64 KiB to receive) for one run, instead
# of the 1 MiB `Cluster::init` sets: what the setting is worth, in the same round.
ucx_segments() { UCX_TCP_TX_SEG_SIZE=8kb UCX_TCP_RX_SEG_SIZE=64kb "$@"; }
# The figure of a run's `MODE value unit` line; MPI's own complaints go to stderr.
figure() { awk -v m="$1" '$1 == m {print $2}'; }
py=$(python3 -c 'import mpi4py' 2>/dev/null && echo yes || echo no)
results=$(mktemp)
for round in $(seq "$rounds"); do
  {
    echo "raw $(run "$bin" raw "$big" | figure raw)"
    echo "pool $(run "$bin" pool "$big" | figure pool)"
    # The same with UCX's own TCP segment sizes, not ringpipe's (`UCX_TCP_SEGMENTS`).
    echo "pool_ucx $(ucx_segments run "$bin" pool "$big" | figure pool)"
    echo "tiny $(run "$bin" tiny "$tiny" | figure tiny)"
    if [ "$py" = yes ]; then
      echo "mpi4py_256 $(run python3 -m mpi4py.futures benches/cluster_mpi4py.py $((tiny / 10)) 256 | figure mpi4py)"
      echo "mpi4py_1 $(run python3 -m mpi4py.futures benches/cluster_mpi4py.py $((tiny / 300)) 1 | figure mpi4py)"
    fi
    echo "one $(run1 10.77.0.1 "$bin" zstd "$zstd" | figure zstd)"
    echo "two $(run "$bin" zstd "$zstd" | figure zstd)"
    echo "two_ucx $(ucx_segments run "$bin" zstd "$zstd" | figure zstd)"
    # Two one-host jobs at once, on cores 0 and 1: what two cores give when nothing
    # crosses between hosts (half the tasks each), over the span from the first start
    # to the last end (the two never start at quite the same moment).
    apart=$( (run1 10.77.0.1 "$bin" zstd $((zstd / 2)) 0 & run1 10.77.0.2 "$bin" zstd $((zstd / 2)) 1; wait) |
      awk -v mib=$(((zstd / 2) * 2 * 1048576)) '$1 == "zstd" {
          for (i = 1; i < NF; i++) { if ($i == "from") f = $(i + 1); if ($i == "to") t = $(i + 1) }
          if (first == "" || f < first) first = f; if (t > last) last = t
        } END { printf "%.1f", mib / (last - first) / 1e6 }')
    echo "apart $apart"
  } | tee -a "$results" | sed "s/^/round $round: /"
done
awk '
  function median(k,   n, i, j, v, t) {
    n = split(all[k], v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  NF == 2 && $2 != "" { all[$1] = all[$1] " " $2 }
  END {
    printf "medians of %d rounds\n", split(all["raw"], x, " ")
    printf "1 MiB tasks: ringpipe %.0f MB/s, raw rsmpi point-to-point %.0f MB/s: %.2f of raw\n",
      median("pool"), median("raw"), median("pool") / median("raw")
    printf "  (UCX default TCP segments: ringpipe %.0f MB/s, %.2f of raw)\n", median("pool_ucx"), median("pool_ucx") / median("raw")
    if ("mpi4py_256" in all) {
      printf "64-byte tasks: ringpipe %.0f tasks/s; mpi4py.futures chunksize=256 %.0f tasks/s: %.1fx;",
        median("tiny"), median("mpi4py_256"), median("tiny") / median("mpi4py_256")
      printf " chunksize=1 (its default) %.0f tasks/s: %.0fx\n", median("mpi4py_1"), median("tiny") / median("mpi4py_1")
    } else {
      printf "64-byte tasks: ringpipe %.0f tasks/s (mpi4py not installed: no peer)\n", median("tiny")
    }
    printf "zstd-3 on 1 MiB text tasks: one host on core 0 %.1f MB/s, two hosts on cores 0 and 1 %.1f MB/s: %.2fx\n",
      median("one"), median("two"), median("two") / median("one")
    printf "  (UCX default TCP segments: two hosts %.1f MB/s, %.2fx)\n", median("two_ucx"), median("two_ucx") / median("one")
    printf "  (two one-host jobs at once on cores 0 and 1, nothing crossing: %.1f MB/s together, %.2fx)\n",
      median("apart"), median("apart") / median("one")
  }' "$results"
rm -f "$results"
