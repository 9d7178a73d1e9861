#!/usr/bin/env bash
# Emulated hosts for MPI on one machine (root only): each host is a network namespace on
# a bridge, and each process launched into it (`enter`) also gets its own hostname, IPC
# namespace, private /dev/shm and an /etc/hosts naming every host. Without that
# isolation MPI between "hosts" silently uses shared memory.
#
#   tests/mpi/hosts.sh up N          # hosts h1..hN at 10.77.0.1..N, bridge rpbr0 at .254
#   tests/mpi/hosts.sh enter IP CMD  # mpiexec's launcher: run CMD on host IP
#   tests/mpi/hosts.sh down          # remove them all (also after a failed run)
#
# mpiexec -launcher rsh -launcher-exec tests/mpi/enter -iface rpbr0 -hosts 10.77.0.1,10.77.0.2 -n 2 PROG
set -euo pipefail
BRIDGE=rpbr0
NET=10.77.0
STATE=/tmp/ringpipe-mpi-hosts

up() {
  local n=$1
  down >/dev/null 2>&1 || true
  mkdir -p "$STATE"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  { echo "127.0.0.1 localhost"; echo "$NET.254 control"; } > "$STATE/hosts"
  for i in $(seq 1 "$n"); do
    ip netns add "rp-h$i"
    ip link add "rpv$i" type veth peer name eth0 netns "rp-h$i"
    ip link set "rpv$i" master "$BRIDGE" up
    ip -n "rp-h$i" addr add "$NET.$i/24" dev eth0
    ip -n "rp-h$i" link set eth0 up
    ip -n "rp-h$i" link set lo up
    echo "$NET.$i h$i" >> "$STATE/hosts"
  done
  echo "$n hosts up: $(seq -s, -f "$NET.%g" 1 "$n")"
}

down() {
  for ns in $(ip netns list 2>/dev/null | awk '/^rp-h[0-9]+/ {print $1}'); do
    # Whatever still runs there (a job that failed) would keep the namespace alive.
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns"
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^rpv[0-9]'); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
}

enter() {
  local host=$1; shift
  local i=${host##*.}
  # Its own hostname, IPC and mount namespaces: a private /dev/shm and /etc/hosts. The
  # command is a shell command line, as rsh takes it (Hydra quotes its arguments).
  exec ip netns exec "rp-h$i" unshare --uts --ipc --mount --propagation private sh -c '
    hostname "h$0"
    mount -t tmpfs -o size=1g tmpfs /dev/shm
    mount --bind "$1" /etc/hosts
    shift 2
    exec sh -c "$*"' "$i" "$STATE/hosts" -- "$@"
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  down) down ;;
  enter) shift; enter "$@" ;;
  *) echo "usage: $0 up N | enter IP CMD... | down" >&2; exit 2 ;;
esac
