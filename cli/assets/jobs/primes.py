# Counts the primes below N on a Dask cluster of W workers: the range is
# cut into chunks counted on the workers (each says where it ran), then
# summed there. Run by `zennet job dask TASK primes.py -- N W`, which sets
# DASK_SCHEDULER_ADDRESS for Client(). Prints one line:
#   ZENNET-PRIMES count=C ran_on=K
import sys

from distributed import Client, get_worker


def count(lo, hi):
    c = 0
    for n in range(max(lo, 2), hi):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            c += 1
    return c, get_worker().address


below, workers = int(sys.argv[1]), int(sys.argv[2])
client = Client()
client.wait_for_workers(workers, timeout=300)
step = max(1, below // (16 * workers))
parts = client.gather(client.map(count, range(0, below, step), [min(lo + step, below) for lo in range(0, below, step)]))
total = client.submit(sum, [p[0] for p in parts]).result()
hosts = {p[1].split("//")[1].rsplit(":", 1)[0] for p in parts}
print(f"ZENNET-PRIMES count={total} ran_on={len(hosts)}", flush=True)
client.close()
