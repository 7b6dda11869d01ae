#!/usr/bin/env python3
"""The Markdown section of bench/blog.sh from its results file (see blog.sh for its shape).

    report.py RESULTS.json
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from machine import describe  # noqa: E402
from spread import cell, ratio, spread  # noqa: E402

SYSTEMS = ("original", "flotilla")


def values(results, system, *path):
    out = []
    for round_ in results["rounds"]:
        value = round_.get(system)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out.append(value)
    return out


def main():
    with open(sys.argv[1]) as f:
        results = json.load(f)
    races = results["params"]["races"]
    rows = [
        ("creates/s: `POST /posts/create`, wrk, 16 connections", ("creates", "rps"), 0, "", "higher"),
        ("created and visible/s: those posts ÷ the time until `GET /posts` held them all", ("creates", "visible_rps"), 0, "", "higher"),
        ("reads/s: `GET /posts` (the whole view), wrk, 16 connections", ("reads", "rps"), 0, "", "higher"),
        (f"race comments lost, of {races} acknowledged create-then-comment races", ("races", "lost"), 0, "", "lower"),
        ("post created → visible in `GET /posts`, p50", ("latency", "post_visible_ms", "p50"), 1, "ms", "lower"),
        ("post created → visible, p99", ("latency", "post_visible_ms", "p99"), 1, "ms", "lower"),
        ("post created → visible, max", ("latency", "post_visible_ms", "max"), 1, "ms", "lower"),
        ("comment created → moderated in `GET /posts`, p50", ("latency", "comment_moderated_ms", "p50"), 1, "ms", "lower"),
        ("comment created → moderated, p99", ("latency", "comment_moderated_ms", "p99"), 1, "ms", "lower"),
        ("comment created → moderated, max", ("latency", "comment_moderated_ms", "max"), 1, "ms", "lower"),
    ]
    rounds = len(results["rounds"])
    p = results["params"]
    print(f"`{results['command']}` — {rounds} round(s), each system fresh in every round, "
          f"the two alternating (which goes first swaps each round); "
          f"{describe(results['machine_before'], results['machine_after'])}. "
          f"Flotilla: `{results['versions']['flotilla']}`, `flotilla up` (embedded bus and "
          f"SQLite, fsync per commit) through its gateway; the original: the course's five "
          f"Node services (Node {results['versions']['node']}, Express 4.17.1, in memory) "
          f"behind nginx {results['versions']['nginx']} routing like its ingress "
          f"([bench/blog/original](bench/blog/original/)). Same client for both: "
          f"[bench/blog/workload.py](bench/blog/workload.py), {p['samples']} latency samples "
          f"of each kind, {p['races']} races {p['clients']} at a time, wrk {p['seconds']} s.")
    print()
    print("Advantage: Flotilla ÷ the original for rates, the original ÷ Flotilla for times "
          "(above 1× Flotilla is better).")
    print()
    print("| figure (median of the rounds, min–max) | the original (Node) | Flotilla | Flotilla's advantage (medians) |")
    print("|---|---:|---:|---:|")
    for label, path, digits, unit, better in rows:
        ours, theirs = values(results, "flotilla", *path), values(results, "original", *path)
        mid_ours, mid_theirs = spread(ours)[1], spread(theirs)[1]
        if better == "higher":
            versus = ratio(mid_ours, mid_theirs, 1)
        elif path[0] == "races":
            versus = ""
        else:
            versus = ratio(mid_theirs, mid_ours, 1)
        print(f"| {label} | {cell(theirs, digits, unit)} | {cell(ours, digits, unit)} | {versus} |")

    errors = []
    for system in SYSTEMS:
        for round_no, round_ in enumerate(results["rounds"], 1):
            run = round_.get(system) or {}
            if "error" in run:
                errors.append(f"round {round_no}, {system}: did not finish ({run['error']})")
                continue
            for phase in ("creates", "reads"):
                bad = run.get(phase, {}).get("non_2xx", 0) + run.get(phase, {}).get("socket_errors", 0)
                if bad:
                    errors.append(f"round {round_no}, {system}: {bad} {phase} answered non-2xx or failed")
            made = run.get("creates", {})
            created = made.get("requests", 0) - made.get("non_2xx", 0)
            if "visible" in made and made["visible"] < created:
                errors.append(f"round {round_no}, {system}: {created - made['visible']} of {created} "
                              f"created posts never became visible")
            failed = sum((run.get("races", {}).get("failed") or {}).values())
            if failed:
                errors.append(f"round {round_no}, {system}: {failed} races failed before their comment's 201")
            timeouts = run.get("latency", {}).get("timeouts", 0)
            if timeouts:
                errors.append(f"round {round_no}, {system}: {timeouts} latency samples never became visible (10 s)")
    ceiling = results.get("ceiling") or {}
    print()
    if ceiling.get("rps"):
        best = spread(values(results, "flotilla", "creates", "rps"))[2] or 0
        print(f"The client is not the bottleneck: the same wrk command and Lua script against nginx "
              f"answering `return 201` on the same machine made {ceiling['rps']:,.0f} requests/s "
              f"({ratio(ceiling['rps'], best, 1)} the best Flotilla round).")
    if errors:
        print()
        print("Errors seen: " + "; ".join(errors) + ".")
    else:
        print()
        print("No errors: every request of every phase was answered 2xx, every latency sample became visible.")


if __name__ == "__main__":
    main()
