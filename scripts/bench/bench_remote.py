#!/usr/bin/env python3
"""Push and clone of a generated checkpoint series to SeaweedFS on loopback, beside restic's S3
backend on the same server (docs/benchmarks.md, "Remotes on SeaweedFS").

For each series: cairn commits every checkpoint locally (not timed), then `cairn push` of the
whole history is timed, then `cairn clone` into a new store and `cairn checkout` of the last
checkpoint; restic backs up every checkpoint into an S3 repository on the same server (timed:
that is its push), then `restic restore latest` (its way to get the last checkpoint on another
machine). Requests and bytes are counted by the server (SeaweedFS's Prometheus metrics:
s3_request_total, bucket_traffic_{received,sent}_bytes_total), so both tools are counted alike.
Every restored file is checked against the original's SHA-256. Rounds alternate the tools and
each is repeated; medians are reported.

  scripts/bench/bench_remote.sh [--scale small|default] [--rounds N] [--series a,b] [--out DIR]
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_sidebyside as sbs  # noqa: E402

CAIRN = os.environ.get("CAIRN_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "cairn")
WEED = os.environ.get("CAIRN_WEED") or os.path.expanduser("~/.cache/cairn-s3/venv/bin/weed")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Weed:
    def __init__(self, root):
        self.s3, self.metrics = free_port(), free_port()
        flags = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg",
                 "admin.port", "admin.port.grpc"]
        # Authentication on, with one identity: restic signs with streaming signatures, which
        # SeaweedFS accepts only with authentication configured.
        conf = os.path.join(root, "..", "s3.json")
        with open(conf, "w") as f:
            json.dump({"identities": [{"name": "bench", "credentials": [
                {"accessKey": "bench", "secretKey": "bench"}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        cmd = [WEED, "mini", f"-dir={root}", f"-s3.config={conf}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-bucket=cairn", "-admin.ui=false", "-webdav=false", f"-s3.port={self.s3}",
               f"-metricsPort={self.metrics}"] + [f"-{f}={free_port()}" for f in flags]
        self.log = open(os.path.join(root, "..", "weed.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.s3}/cairn/", timeout=1) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                if e.code == 403:  # up, and refusing anonymous requests
                    time.sleep(1)
                    return
                time.sleep(0.1)
            except Exception:
                time.sleep(0.1)
        sys.exit("weed mini did not come up")

    def counters(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics").read().decode()
        req = sum(float(m) for m in re.findall(r'^SeaweedFS_s3_request_total\{[^}]*\} (\S+)', text, re.M))
        rx = sum(float(m) for m in re.findall(r'^SeaweedFS_s3_bucket_traffic_received_bytes_total\{[^}]*\} (\S+)', text, re.M))
        tx = sum(float(m) for m in re.findall(r'^SeaweedFS_s3_bucket_traffic_sent_bytes_total\{[^}]*\} (\S+)', text, re.M))
        return req, rx, tx

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def timed(cmd, env, cwd=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"FAILED: {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}")
    return dt, r.stdout.decode()


def measured(weed, cmd, env, cwd=None):
    a = weed.counters()
    dt, out = timed(cmd, env, cwd)
    b = weed.counters()
    return dict(seconds=dt, requests=b[0] - a[0], bytes_up=b[1] - a[1], bytes_down=b[2] - a[2]), out


def check_same(orig, restored):
    a, b = sbs.sha256_tree(orig), sbs.sha256_tree(restored)
    if a != b:
        sys.exit(f"MISMATCH: {restored} differs from {orig}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--series", default="finetune-fp32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cairn-bench-remote-")
    sbs.RUN_TMP = work
    series, _ = sbs.generate(args.scale, os.path.join(work, "series"))
    results = {}
    results_tensor_bytes = {}
    for name in args.series.split(","):
        dirs = series[name]["dirs"]
        logical = sum(sbs.logical_bytes(d) for d in dirs)
        rows = {"cairn push": [], "cairn clone": [], "cairn clone+checkout": [],
                "cairn clone --lazy": [], "lazy: the lm_head tensor": [],
                "lazy: checkout of the last": [],
                "restic backup (push)": [], "restic restore latest": []}
        for rnd in range(args.rounds):
            root = os.path.join(work, f"r{rnd}")
            os.makedirs(os.path.join(root, "weed"))
            weed = Weed(os.path.join(root, "weed"))
            env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{weed.s3}",
                       AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                       RESTIC_PASSWORD="bench", CAIRN_AUTHOR="bench")
            try:
                order = ["cairn", "restic"] if rnd % 2 == 0 else ["restic", "cairn"]
                for tool in order:
                    subprocess.run(["sync"])
                    if tool == "cairn":
                        store = os.path.join(root, "store")
                        timed([CAIRN, "--store", store, "init"], env)
                        for d in dirs:
                            timed([CAIRN, "--store", store, "commit", d], env)
                        timed([CAIRN, "--store", store, "remote", "add", "origin",
                               "s3://cairn/cairn"], env)
                        m, out = measured(weed, [CAIRN, "--store", store, "push", "--json"], env)
                        m["tool_bytes_sent"] = json.loads(out)["bytes_sent"]
                        rows["cairn push"].append(m)
                        clone = os.path.join(root, "clone")
                        m, _ = measured(weed, [CAIRN, "clone", "s3://cairn/cairn", clone], env)
                        rows["cairn clone"].append(m)
                        dst = os.path.join(root, "cairn-out")
                        t, _ = timed([CAIRN, "--store", clone, "checkout", "HEAD", dst], env)
                        m2 = dict(m)
                        m2["seconds"] = m["seconds"] + t
                        rows["cairn clone+checkout"].append(m2)
                        check_same(dirs[-1], dst)
                        lazy = os.path.join(root, "lazy")
                        m, _ = measured(weed, [CAIRN, "clone", "--lazy", "s3://cairn/cairn", lazy], env)
                        rows["cairn clone --lazy"].append(m)
                        m, _ = measured(weed, [CAIRN, "--store", lazy, "tensor", "HEAD",
                                               "model.safetensors:lm_head.weight", "-o",
                                               os.path.join(root, "head.safetensors")], env)
                        rows["lazy: the lm_head tensor"].append(m)
                        results_tensor_bytes[name] = os.path.getsize(os.path.join(root, "head.safetensors"))
                        dst = os.path.join(root, "lazy-out")
                        m, _ = measured(weed, [CAIRN, "--store", lazy, "checkout", "HEAD", dst], env)
                        rows["lazy: checkout of the last"].append(m)
                        check_same(dirs[-1], dst)
                    else:
                        repo = f"s3:http://127.0.0.1:{weed.s3}/cairn/restic"
                        timed(["restic", "-r", repo, "init", "-q"], env)
                        m = dict(seconds=0, requests=0, bytes_up=0, bytes_down=0)
                        for d in dirs:
                            mi, _ = measured(weed, ["restic", "-r", repo, "backup", "-q", "."], env, cwd=d)
                            for k in m:
                                m[k] += mi[k]
                        rows["restic backup (push)"].append(m)
                        dst = os.path.join(root, "restic-out")
                        m, _ = measured(weed, ["restic", "-r", repo, "restore", "latest", "-q",
                                               "--target", dst], env)
                        rows["restic restore latest"].append(m)
                        check_same(dirs[-1], dst)
            finally:
                weed.stop()
            shutil.rmtree(root)
        summary = {}
        for k, v in rows.items():
            med = lambda key: statistics.median(x[key] for x in v)  # noqa: E731
            summary[k] = dict(seconds=med("seconds"), requests=med("requests"),
                              bytes_up=med("bytes_up"), bytes_down=med("bytes_down"),
                              runs=[round(x["seconds"], 3) for x in v])
        results[name] = dict(logical=logical, checkpoints=len(dirs), rows=summary)
        print(f"\n### {name}: {len(dirs)} checkpoints, {logical/1e6:.0f} MB logical, "
              f"{args.rounds} rounds (medians)\n")
        print("| what | seconds | MB/s of logical | MB up | MB down | requests | requests per GiB moved |")
        print("|---|---|---|---|---|---|---|")
        for k, s in summary.items():
            moved = max(s["bytes_up"], s["bytes_down"])
            last = sbs.logical_bytes(dirs[-1])
            basis = logical if "push" in k or k in ("cairn clone", "cairn clone --lazy") else last
            if "tensor" in k:
                basis = results_tensor_bytes.get(name, 0) or last
            print(f"| {k} | {s['seconds']:.2f} | {basis/1e6/s['seconds']:.0f} | "
                  f"{s['bytes_up']/1e6:.1f} | {s['bytes_down']/1e6:.1f} | {s['requests']:.0f} | "
                  f"{s['requests']/(moved/2**30) if moved else 0:.0f} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "remote.json"), "w") as f:
            json.dump(results, f, indent=1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
