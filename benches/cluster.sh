#!/usr/bin/env bash
# The pool across hosts against its peers, in one run, on two hosts emulated with
# network namespaces (root; MPICH; mpi4py for the Python peer, optional:
# `pip install --no-binary mpi4py mpi4py`). Prints each figure and the ratios that count.
#
#   benches/cluster.sh [TASKS_1MIB] [TASKS_64B] [TASKS_ZSTD]
set -euo pipefail
cd "$(dirname "$0")/.."
big=${1:-2000}
tiny=${2:-200000}
zstd=${3:-400}
cargo bench --features mpi --bench cluster --no-run 2>/dev/null
bin=$(ls -t target/release/deps/cluster-* | grep -v '\.d$' | head -1)
hosts=tests/mpi/hosts.sh
trap '$hosts down >/dev/null 2>&1 || true' EXIT
$hosts up 2 >/dev/null
run() {
  mpiexec -launcher rsh -launcher-exec "$PWD/tests/mpi/enter" -iface rpbr0 \
    -hosts 10.77.0.1,10.77.0.2 -n 2 "$@"
}
run1() {
  mpiexec -launcher rsh -launcher-exec "$PWD/tests/mpi/enter" -iface rpbr0 -hosts 10.77.0.1 -n 1 "$@"
}
figure() { awk -v m="$1" '$1 == m {print $2}'; }
raw=$(run "$bin" raw "$big" | figure raw)
pool=$(run "$bin" pool "$big" | figure pool)
echo "1 MiB tasks: ringpipe $pool MB/s, raw rsmpi point-to-point $raw MB/s: $(awk -v a="$pool" -v b="$raw" 'BEGIN {printf "%.2f", a / b}') of raw"
ours=$(run "$bin" tiny "$tiny" | figure tiny)
if python3 -c 'import mpi4py' 2>/dev/null; then
  py=$(run python3 -m mpi4py.futures benches/cluster_mpi4py.py $((tiny / 10)) | figure mpi4py)
  echo "64-byte tasks: ringpipe $ours tasks/s, mpi4py.futures $py tasks/s: $(awk -v a="$ours" -v b="$py" 'BEGIN {printf "%.1f", a / b}')x"
else
  echo "64-byte tasks: ringpipe $ours tasks/s (mpi4py not installed: no peer)"
fi
one=$(run1 "$bin" zstd "$zstd" | figure zstd)
two=$(run "$bin" zstd "$zstd" | figure zstd)
echo "zstd-3 on 1 MiB text tasks: one host on core 0 $one MB/s, two hosts on cores 0 and 1 $two MB/s: $(awk -v a="$two" -v b="$one" 'BEGIN {printf "%.2f", a / b}')x"
