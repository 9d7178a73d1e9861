"""The Python peer of `benches/cluster.rs tiny`: 64-byte tasks echoed by an
mpi4py.futures MPIPoolExecutor across the same hosts. Run under mpiexec with
`python3 -m mpi4py.futures`: `cluster_mpi4py.py N [CHUNKSIZE]`. With CHUNKSIZE 256 the
executor batches tasks as ringpipe does (its fastest setting); with 1, its default, each
task is a message of its own."""
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def echo(task):
    return task


if __name__ == "__main__":
    n = int(sys.argv[1])
    chunksize = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    tasks = [bytes(64)] * n
    with MPIPoolExecutor() as pool:
        started = time.perf_counter()
        count = sum(1 for _ in pool.map(echo, tasks, chunksize=chunksize, unordered=True))
        secs = time.perf_counter() - started
    assert count == n
    print(f"mpi4py {n / secs:.0f} tasks/s")
