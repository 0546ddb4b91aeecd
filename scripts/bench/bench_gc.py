"""Retention beside training: what a stored policy costs a commit, and how long a small commit
waits for a gc that is repacking (docs/benchmarks.md, "gc beside commits").

  * commit time: the fine-tune series of bench_sidebyside.py (4 checkpoints, 554 MB each at the
    default scale) committed in order into a fresh store, without a policy and with
    `retention set 'keep-last 1'`, alternated round by round, `sync` before each series. Each
    commit is timed from start to the CLI's exit (durable and published). Two paces: back to
    back, and with PAUSE seconds between commits (a training loop's steps between checkpoints),
    after which the policy's background gc has finished. With --cairn-base, the same rounds
    with that binary (the starting commit, whose commit ran the policy's gc before exiting).
  * stall: a store of the whole series, then `gc --keep-last 1` (prunes three commits,
    re-encodes the kept one's delta chunks, repacks); DELAY ms after gc starts, a 6-byte
    commit on another branch is timed, against the same commit with no gc running. Also the
    time gc itself held the writers' lock (`writers_excluded_ms`, new binary only).

Medians of ROUNDS. Prints tables and writes results.json to --out.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench_sidebyside as sbs  # noqa: E402


def sh(cmd, env, **kw):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"FAILED ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def timed(cmd, env):
    t0 = time.perf_counter()
    out = sh(cmd, env)
    return time.perf_counter() - t0, out


def env_for(store):
    e = dict(os.environ, CAIRN_STORE=store, CAIRN_AUTHOR="bench@cairn")
    return e


def series_run(binary, dirs, store, policy, pause):
    """Commit every checkpoint into a fresh store; per-commit seconds to the CLI's exit."""
    shutil.rmtree(store, ignore_errors=True)
    env = env_for(store)
    sh([binary, "init"], env)
    if policy:
        sh([binary, "retention", "set", "keep-last 1"], env)
    subprocess.run(["sync"], check=True)
    times = []
    for i, d in enumerate(dirs):
        if i and pause:
            # The training loop's steps: the policy's background gc runs meanwhile.
            time.sleep(pause)
        t, _ = timed([binary, "commit", d, "-m", f"ck{i}"], env)
        times.append(t)
    # The background gc of the last commit, if any, before the store goes.
    if policy and "--wait-idle" in sh([binary, "gc", "--help"], env):
        sh([binary, "gc", "--status", "--wait-idle"], env)
    stored = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(store, "packs"))
                 for f in fs)
    shutil.rmtree(store)
    return times, stored


def small_commit(binary, store, tmp, n):
    d = os.path.join(tmp, f"small{n}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "note.txt"), "w") as f:
        f.write(f"{n:05d}\n")
    t, _ = timed([binary, "commit", d, "--branch", f"side{n}", "-m", "small"], env_for(store))
    return t


def stall_round(binary, prepared, work, delay_ms, n):
    """Copy the prepared store, start gc, commit 6 bytes `delay_ms` later; returns (alone s,
    during s, gc s, gc json)."""
    store = os.path.join(work, "stall-store")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(prepared, store)
    sbs.warm([os.path.join(store, "packs")])
    subprocess.run(["sync"], check=True)
    alone = small_commit(binary, store, work, 2 * n)
    t0 = time.perf_counter()
    gc = subprocess.Popen([binary, "gc", "--keep-last", "1", "--branch", "main", "--json"],
                          env=env_for(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    time.sleep(delay_ms / 1000)
    during = small_commit(binary, store, work, 2 * n + 1)
    out, err = gc.communicate()
    gc_s = time.perf_counter() - t0
    if gc.returncode != 0:
        sys.exit(f"gc failed: {err}")
    return alone, during, gc_s, json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cairn", default=os.environ.get("CAIRN_BIN", "cairn"))
    ap.add_argument("--cairn-base", default=os.environ.get("CAIRN_BASE_BIN"))
    ap.add_argument("--scale", default="default", choices=sorted(sbs.SCALES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause", type=float, default=3.0, help="seconds between paced commits")
    ap.add_argument("--paces", default=None,
                    help="comma-separated pauses to run (default: 0 and --pause)")
    ap.add_argument("--delays", default="200,500,1000",
                    help="ms from gc's start to the small commit (empty: no stall rounds)")
    args = ap.parse_args()
    os.makedirs(args.out)
    sbs.RUN_TMP = args.out
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    series, _ = sbs.generate(args.scale, os.path.join(args.out, "series"), only={"finetune-fp32"})
    dirs = series["finetune-fp32"]["dirs"]
    sbs.warm(dirs)
    bins = [("new", args.cairn)] + ([("base", args.cairn_base)] if args.cairn_base else [])
    work = os.path.join(args.out, "work")
    os.makedirs(work)
    res = {"started": started, "load_start": sbs.uptime(), "bins": dict(bins), "commit": {}, "stall": {}}

    # Commit time, with and without a policy, back to back and paced.
    paces = [float(x) for x in args.paces.split(",")] if args.paces else [0.0, args.pause]
    delays = [int(x) for x in args.delays.split(",") if x]
    for r in range(args.rounds):
        for pace in paces:
            for name, b in bins:
                for policy in (False, True):
                    times, stored = series_run(b, dirs, os.path.join(work, "s"), policy, pace)
                    key = f"{name} {'policy' if policy else 'none'} pause {pace:g}"
                    res["commit"].setdefault(key, []).append(dict(times=times, stored=stored))
                    print(f"round {r + 1}: {key}: " + ", ".join(f"{t:.2f}" for t in times)
                          + f" s; packs {stored / 1e6:.0f} MB", flush=True)

    # Stall of a small commit during a large repack.
    prepared = os.path.join(work, "prepared")
    env = env_for(prepared)
    if delays:
        sh([args.cairn, "init"], env)
        for i, d in enumerate(dirs):
            sh([args.cairn, "commit", d, "-m", f"ck{i}"], env)
    for r in range(args.rounds if delays else 0):
        for delay in delays:
            for name, b in bins:
                alone, during, gc_s, out = stall_round(b, prepared, work, delay, r * 100 + delay)
                key = f"{name} delay {delay}"
                res["stall"].setdefault(key, []).append(dict(
                    alone=alone, during=during, gc_s=gc_s,
                    excluded_ms=out.get("writers_excluded_ms"), reencoded=out["chunks_reencoded"],
                    repacked=out["packs_repacked"], mode=out["mode"]))
                print(f"round {r + 1}: stall {key}: alone {alone:.3f} s, during gc {during:.3f} s, "
                      f"gc {gc_s:.2f} s ({out['mode']}, re-encoded {out['chunks_reencoded']}, "
                      f"repacked {out['packs_repacked']}, writers excluded "
                      f"{out.get('writers_excluded_ms', float('nan')):.0f} ms)", flush=True)

    med = statistics.median
    print("\n| binary, policy, pause | commit 1 s | commits 2-4 s (median) | series s (median) | packs MB |")
    print("|---|---|---|---|---|")
    table = {}
    for key, runs in res["commit"].items():
        first = med(x["times"][0] for x in runs)
        later = med(t for x in runs for t in x["times"][1:])
        total = med(sum(x["times"]) for x in runs)
        table[key] = dict(first=first, later=later, total=total)
        print(f"| {key} | {first:.2f} | {later:.2f} | {total:.2f} | {runs[-1]['stored'] / 1e6:.0f} |")
    for name, _ in bins:
        for pace in paces:
            a, b = table[f"{name} none pause {pace:g}"], table[f"{name} policy pause {pace:g}"]
            print(f"{name}, pause {pace:g} s: commits 2-4 with the policy / without: "
                  f"{b['later'] / a['later']:.2f}x; series {b['total'] / a['total']:.2f}x")
    print("\n| binary, delay | small commit alone s | during gc s | waited s | gc s | writers excluded ms |")
    print("|---|---|---|---|---|---|")
    for key, runs in res["stall"].items():
        al, du = med(x["alone"] for x in runs), med(x["during"] for x in runs)
        ex = [x["excluded_ms"] for x in runs if x["excluded_ms"] is not None]
        print(f"| {key} | {al:.3f} | {du:.3f} | {med(x['during'] - x['alone'] for x in runs):.3f} "
              f"| {med(x['gc_s'] for x in runs):.2f} | {med(ex):.0f} |" if ex else
              f"| {key} | {al:.3f} | {du:.3f} | {med(x['during'] - x['alone'] for x in runs):.3f} "
              f"| {med(x['gc_s'] for x in runs):.2f} | - |")
    res["load_end"] = sbs.uptime()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"== load {res['load_start']} -> {res['load_end']}; results: {args.out}/results.json")
    shutil.rmtree(os.path.join(args.out, "series"))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
