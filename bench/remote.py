#!/usr/bin/python3
"""Remote slides over latency: `tessera bench` on a slide served over HTTP by a loopback
server with a round-trip latency injected, beside the same workload on the local file and
beside the naive way of reading remotely (one range request per tile read, no block cache, no
read-ahead, no more requests in flight than workers: tessera with TESSERA_REMOTE_CACHE_MIB=0
and TESSERA_REMOTE_REQUESTS=workers), all in one run against one server. Prints a table (and
--json the raw reports).

    /usr/bin/python3 bench/remote.py [--slide PATH] [--count 2000] [--naive-count 300]
                                     [--latency 0.02] [--workers 2] [--requests 16,64]
                                     [--repeat 3] [--server latency|threads]
                                     [--baseline-cli PATH]
    /usr/bin/python3 bench/remote.py --stream 100000

The server is tests/remote_server.py's LatencyServer (asyncio in --server-processes forked
processes: every request answered once its latency has passed, and little else on the CPU);
--server threads takes the tests' SlideServer instead (a Python thread per connection under
one GIL, whose own queueing adds to the latency past about 16 requests in flight).
The naive reader reads every tile remotely whatever the count (it caches nothing), so its
rate does not depend on the count: it reads --naive-count patches to keep the run short.
--requests runs tessera again with that many requests in flight (TESSERA_REMOTE_REQUESTS;
the default is 32), to show how throughput grows with them. --baseline-cli runs another
build's `tessera` (an earlier commit's) on the same URL, in the same turns.

Without --slide it writes `tessera sample --width 40000 --height 32000 --quality 80` (135 MB,
larger than the default 64 MiB block cache) into /tmp/tessera-remote-bench. Run from the
repository root after `./dev.sh build`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from remote_server import LatencyServer, SlideServer  # noqa: E402

CLI = os.environ.get("TESSERA_CLI", os.path.join(ROOT, "build", "cli", "tessera"))


def bench(slide, count, workers, seed, env=None, cli=CLI):
    cmd = [cli, "bench", slide, "--layout", "random", "--count", str(count), "--size",
           "224,224", "--workers", str(workers), "--seed", str(seed), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr))
    return json.loads(r.stdout)


_sums = {}


def local_sum(slide, report, rep):
    """The local file's checksum for the same count, workers and seed."""
    key = (report["count"], report["workers"], rep)
    if key not in _sums:
        _sums[key] = bench(slide, report["count"], report["workers"], rep)["checksum"]
    return _sums[key]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.02, help="seconds per request (0.02)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--naive-count", type=int, default=300)
    p.add_argument("--requests", default="16,64", help="requests in flight to try besides 32")
    p.add_argument("--server", choices=("latency", "threads"), default="latency")
    p.add_argument("--server-processes", type=int, default=2)
    p.add_argument("--baseline-cli", help="another build's tessera, run on the URL too")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--stream", type=int, default=0,
                   help="instead: N patches from the local file and over HTTP (no latency), "
                        "one run each, to compare peak memory of a long remote stream")
    a = p.parse_args()
    slide = a.slide
    if not slide:
        d = "/tmp/tessera-remote-bench"
        os.makedirs(d, exist_ok=True)
        slide = os.path.join(d, "big.tiff")
        if not os.path.exists(slide):
            subprocess.run([CLI, "sample", slide, "--width", "40000", "--height", "32000",
                            "--quality", "80"], check=True, capture_output=True)
    with open(slide, "rb") as f:
        data = f.read()
    if a.stream:
        with SlideServer() as server:
            url = server.add(os.path.basename(slide), data)
            for name, src in (("local file", slide), ("remote, tessera (defaults)", url)):
                r = bench(src, a.stream, a.workers, seed=0)
                print("%-28s %d patches  %.1f patches/s  peak RSS %.1f MiB  requests %d  "
                      "fetched %.1f MiB  checksum %d" % (
                          name, r["patches"], r["patches_per_s"], r["peak_rss_mib"],
                          r["requests"], r["bytes_fetched"] / 2 ** 20, r["checksum"]))
        return
    raw = {}
    name0 = os.path.basename(slide)
    if a.server == "latency":
        server = LatencyServer({name0: data}, latency=a.latency, processes=a.server_processes)
    else:
        server = SlideServer()
    with server:
        if a.server == "threads":
            server.add(name0, data)
            server.faults.latency = a.latency
        url = server.url(name0)
        naive_env = {"TESSERA_REMOTE_CACHE_MIB": "0", "TESSERA_REMOTE_REQUESTS": str(a.workers)}
        runs = [("local file", slide, a.workers, None, CLI),
                ("remote, tessera (defaults: 32 requests in flight)", url, a.workers, None, CLI),
                ("remote, naive", url, a.workers, naive_env, CLI)]
        runs += [("remote, tessera, %s requests in flight" % r, url, a.workers,
                  {"TESSERA_REMOTE_REQUESTS": r}, CLI) for r in a.requests.split(",") if r]
        if a.baseline_cli:
            runs.append(("remote, baseline build (its defaults)", url, a.workers, None,
                         a.baseline_cli))
        results = {name: [] for name, *_ in runs}
        for rep in range(a.repeat):  # in turns, so drift hits every reader alike
            for name, src, workers, env, cli in runs:
                server.reset_counts()
                count = a.naive_count if env is naive_env else a.count
                r = bench(src, count, workers, seed=rep, env=env, cli=cli)
                r["count"] = count
                r["server_requests"] = server.count(name0)
                r["server_max_in_flight"] = server.max_in_flight
                results[name].append(r)
        raw = results
    local = statistics.median(r["patches_per_s"] for r in results["local file"])
    naive = statistics.median(r["patches_per_s"] for r in results["remote, naive"])
    print("slide: %s (%d bytes), %d random 224x224 patches of level 0 (naive: %d), latency "
          "%.0f ms per request (%s server), median of %d runs" % (
              slide, len(data), a.count, a.naive_count, a.latency * 1000, a.server, a.repeat))
    print("| reader | workers | patches/s | vs local | vs naive | requests (open) | most in flight "
          "| MiB fetched | peak RSS MiB | checksums |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, src, workers, env, cli in runs:
        rs = results[name]
        pps = statistics.median(r["patches_per_s"] for r in rs)
        req = statistics.median(r["requests"] for r in rs)
        opn = statistics.median(r["open_requests"] for r in rs)
        mib = statistics.median(r["bytes_fetched"] for r in rs) / 2 ** 20
        rss = max(r["peak_rss_mib"] for r in rs)
        # each repeat has its own seed: compare with the local run of the same seed (the
        # naive runs read fewer patches: their sums are checked against a local run of theirs)
        ok = "agree" if all(r["checksum"] == local_sum(slide, r, rep)
                            for rep, r in enumerate(rs)) else "DIFFER"
        most = max(r["server_max_in_flight"] for r in rs) if src != slide else 0
        print("| %s | %d | %.1f | %.1f %% | %.2fx | %d (%d) | %d | %.1f | %.1f | %s |" % (
            name, workers, pps, 100 * pps / local, pps / naive, req, opn, most, mib, rss, ok))
    if a.json:
        print(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
