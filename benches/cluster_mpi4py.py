"""The Python peer of `benches/cluster.rs tiny`: 64-byte tasks echoed by an
mpi4py.futures MPIPoolExecutor across the same hosts, in chunks of 256 (as ringpipe
batches them). Run under mpiexec with `python3 -m mpi4py.futures`."""
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def echo(task):
    return task


if __name__ == "__main__":
    n = int(sys.argv[1])
    tasks = [bytes(64)] * n
    with MPIPoolExecutor() as pool:
        started = time.perf_counter()
        count = sum(1 for _ in pool.map(echo, tasks, chunksize=256, unordered=True))
        secs = time.perf_counter() - started
    assert count == n
    print(f"mpi4py {n / secs:.0f} tasks/s")
