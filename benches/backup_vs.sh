#!/usr/bin/env bash
# The backup example against the tools users run today, on one tree of real files.
#
#   benches/backup_vs.sh            # builds the example, makes the tree, 2 rounds
#   ROUNDS=3 KEEP=1 benches/backup_vs.sh
#
# The tree is a copy of files a machine that builds ringpipe has: the Rust
# toolchain's lib/, the cargo registry's crate sources and /usr/share/doc (with their
# symbolic links). Each round backs it up and restores it with the ringpipe example,
# restic (`--compression auto`, repository v2) and borg (`--compression zstd,3`,
# repokey-blake2 encryption), interleaved, each into a fresh repository and an
# empty target. Repositories and restores go to a tmpfs (/dev/shm, when it has
# room; RESTORE_DIR overrides), so that what is measured is the tool, not this
# machine's disk; `sync` runs before each timed step and the page cache holds the
# tree for all of them alike. It prints wall time,
# MB/s (of the tree's file bytes) and output size per run, then each tool's median
# and ringpipe's ratio to restic. The ringpipe restore is compared with the tree
# (`diff -r --no-dereference`) every round.
#
# Needs the Debian packages `restic` and `borgbackup` (installed if missing and
# apt-get is there).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringpipe-backup-vs.XXXXXX")
cleanup() { [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT

if ! command -v restic >/dev/null || ! command -v borg >/dev/null; then
  if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q restic borgbackup >/dev/null
  else
    echo "needs restic and borg (Debian: apt-get install restic borgbackup)" >&2
    exit 1
  fi
fi
cargo build --release --example backup -q
RINGPIPE=$PWD/target/release/examples/backup

TREE=$WORK/tree
RESTORE_DIR=${RESTORE_DIR:-}
mkdir -p "$TREE"
for src in "$(rustc --print sysroot)/lib" "${CARGO_HOME:-$HOME/.cargo}/registry/src" /usr/share/doc; do
  [ -d "$src" ] && cp -a "$src" "$TREE/$(echo "$src" | tr / _)"
done
BYTES=$(find "$TREE" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
FILES=$(find "$TREE" -type f | wc -l)
LINKS=$(find "$TREE" -type l | wc -l)
DIRS=$(find "$TREE" -type d | wc -l)
if [ -z "$RESTORE_DIR" ]; then
  RESTORE_DIR=$WORK
  if [ -w /dev/shm ] && [ "$(df -B1 --output=avail /dev/shm | tail -1)" -gt $((3 * BYTES)) ]; then
    RESTORE_DIR=$(mktemp -d /dev/shm/ringpipe-backup-vs.XXXXXX)
  fi
fi
cleanup() {
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  [ "$RESTORE_DIR" != "$WORK" ] && rm -rf "$RESTORE_DIR"
  true
}
echo "repositories and restores go to $RESTORE_DIR"
printf 'tree: %.0f MiB in %d files, %d symbolic links, %d directories; %d rounds\n' \
  "$(echo "$BYTES / 1048576" | bc -l)" "$FILES" "$LINKS" "$DIRS" "$ROUNDS"

export RINGPIPE_PASSPHRASE=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$WORK/borg-home RESTIC_CACHE_DIR=$WORK/restic-cache

now() { date +%s.%N; }
# Reads the whole tree, so each backup starts with it in the page cache (a host
# may reclaim pages that went unread for a while).
warm() { find "$TREE" -type f -print0 | xargs -0 cat >/dev/null; }
RESULTS=$WORK/results
: >"$RESULTS"

# run TOOL ROUND: one backup and one restore, timed; appends a line to $RESULTS.
run() {
  local tool=$1 round=$2 repo=$RESTORE_DIR/repo-$1 dst=$RESTORE_DIR/restored-$1 t0 t1 t2
  rm -rf "$repo" "$dst" "$BORG_BASE_DIR" "$RESTIC_CACHE_DIR"
  mkdir -p "$dst"
  case $tool in
    ringpipe)
      warm; sync; t0=$(now); "$RINGPIPE" backup "$TREE" "$repo" >/dev/null
      sync; t1=$(now); "$RINGPIPE" restore "$repo" "$dst" >/dev/null 2>&1
      t2=$(now)
      diff -r --no-dereference "$TREE" "$dst" >/dev/null || { echo "ringpipe: restored tree differs" >&2; exit 1; }
      ;;
    restic)
      restic init --repository-version 2 --repo "$repo" -q
      warm; sync; t0=$(now); restic -r "$repo" backup --compression auto -q "$TREE"
      sync; t1=$(now); restic -r "$repo" restore latest --target "$dst" -q
      t2=$(now)
      ;;
    borg)
      borg init --encryption repokey-blake2 "$repo" 2>/dev/null
      warm; sync; t0=$(now); (cd "$WORK" && borg create --compression zstd,3 "$repo::a" tree)
      sync; t1=$(now); (cd "$dst" && borg extract "$repo::a")
      t2=$(now)
      ;;
  esac
  local size
  size=$(du -sb "$repo" | cut -f1)
  echo "$tool $round $(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t1" | bc -l) $size" >>"$RESULTS"
  rm -rf "$repo" "$dst"
}

for round in $(seq "$ROUNDS"); do
  for tool in ringpipe restic borg; do
    run "$tool" "$round"
  done
done

awk -v bytes="$BYTES" '
  { b = bytes / 1e6 / $3; r = bytes / 1e6 / $4
    printf "%-9s round %d  backup %6.2f s %6.0f MB/s   restore %6.2f s %6.0f MB/s   output %6.1f MiB\n", $1, $2, $3, b, $4, r, $5 / 1048576
    n[$1]++; bs[$1, n[$1]] = b; rs[$1, n[$1]] = r; out[$1] = $5 }
  function median(a, t, k,   i, j, v, x) {
    for (i = 1; i <= k; i++) v[i] = a[t, i]
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
    return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
  }
  END {
    print ""
    print "| tool | backup | restore | output |"
    print "|---|---|---|---|"
    split("ringpipe restic borg", tools, " ")
    for (t = 1; t <= 3; t++) { k = tools[t]
      mb[k] = median(bs, k, n[k]); mr[k] = median(rs, k, n[k])
      printf "| %s | %.0f MB/s | %.0f MB/s | %.0f MiB |\n", k, mb[k], mr[k], out[k] / 1048576 }
    printf "\nringpipe / restic: backup %.2fx, restore %.2fx, output %.2fx\n", mb["ringpipe"] / mb["restic"], mr["ringpipe"] / mr["restic"], out["ringpipe"] / out["restic"]
  }' "$RESULTS"
