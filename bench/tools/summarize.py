#!/usr/bin/env python3
"""Turns the raw output of benchmarks that run several times (bench/run-all.sh) into one
Markdown section with min / median / max over the runs, and the JSON the plots read.

    summarize.py bus LOG_DIR DATA.json       bus-bench outputs: LOG_DIR/throughput.txt,
                                             LOG_DIR/latency.txt, LOG_DIR/size-BYTES.txt
    summarize.py auth LOG_DIR                auth-bench-N.txt and openssl-N.txt per round
    summarize.py upload LOG_DIR DATA.json    upload-SIZE-N.json per size and round
Machine facts: LOG_DIR/machine-before.json and machine-after.json when present.
"""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe  # noqa: E402
from spread import cell, spread  # noqa: E402

ROUND = re.compile(r"^round (\d+): (.+?)\s+([\d.]+) msg/s\s+p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms", re.M)


def machine(log_dir):
    try:
        with open(os.path.join(log_dir, "machine-before.json")) as f:
            before = json.load(f)
    except (OSError, ValueError):
        return ""
    try:
        with open(os.path.join(log_dir, "machine-after.json")) as f:
            after = json.load(f)
    except (OSError, ValueError):
        after = None
    return describe(before, after)


def bus_rounds(path):
    """{contender: {"rate": [...], "p50": [...], "p99": [...]}} from bus-bench's round lines."""
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for _, name, rate, p50, p99 in ROUND.findall(text):
        entry = out.setdefault(name.strip(), {"rate": [], "p50": [], "p99": []})
        entry["rate"].append(float(rate))
        entry["p50"].append(float(p50))
        entry["p99"].append(float(p99))
    return out


def bus(log_dir, data_path):
    lines = [f"Every contender alternates with the others in each round; median (min–max) over the "
             f"rounds. {machine(log_dir)}."]
    for title, name in (("As fast as confirms allow (1 KB messages)", "throughput"),
                        ("Below capacity (`--rate 2000`): the latency is the path, not a backlog", "latency")):
        rounds = bus_rounds(os.path.join(log_dir, f"{name}.txt"))
        if not rounds:
            continue
        command = open(os.path.join(log_dir, f"{name}.cmd")).read().strip() if os.path.exists(
            os.path.join(log_dir, f"{name}.cmd")) else ""
        raw = spread(rounds.get("raw lapin", {}).get("rate", []))[1]
        lines += ["", f"**{title}** — `{command}`", "",
                  "| contender | msgs/s | vs raw lapin (medians) | p50 latency | p99 latency |",
                  "|---|---:|---:|---:|---:|"]
        for contender, figures in rounds.items():
            mid = spread(figures["rate"])[1]
            versus = f"{mid / raw:.2f}×" if raw else "—"
            lines.append(f"| {contender} | {cell(figures['rate'], 0)} | {versus} | "
                         f"{cell(figures['p50'], 1, 'ms')} | {cell(figures['p99'], 1, 'ms')} |")
    sizes = {}
    for path in glob.glob(os.path.join(log_dir, "size-*.txt")):
        size = int(re.search(r"size-(\d+)\.txt$", path).group(1))
        sizes[size] = bus_rounds(path)
    series = {}
    if sizes:
        # In bus-bench's order (raw lapin, then the bus's backends).
        contenders = list(dict.fromkeys(c for size in sorted(sizes) for c in sizes[size]))
        lines += ["", "**Messages per second against payload size** (as fast as confirms allow; "
                  "median (min–max) over the rounds) — plotted in "
                  "[docs/bench/bus-payload.svg](docs/bench/bus-payload.svg)", "",
                  "| payload | " + " | ".join(contenders) + " |",
                  "|---:|" + "---:|" * len(contenders)]
        for size in sorted(sizes):
            lines.append(f"| {size} B | " + " | ".join(cell(sizes[size].get(c, {}).get("rate", []), 0)
                                                      for c in contenders) + " |")
            for c in contenders:
                rates = sizes[size].get(c, {}).get("rate", [])
                if rates:
                    series.setdefault(c, []).append([size, *spread(rates)])
    with open(data_path, "w") as f:
        json.dump({"bench": "bus", "series": [{"name": n, "points": p} for n, p in series.items()]}, f)
    print("\n".join(lines))


AUTH_ROW = re.compile(r"^\|\s*(.+?)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+) \(([\d.]+) µs\)\s*\|", re.M)


def auth(log_dir):
    rows = {}
    order = []
    for path in sorted(glob.glob(os.path.join(log_dir, "auth-bench-*.txt"))):
        for label, wall, cpu, micros in AUTH_ROW.findall(open(path).read()):
            if label not in rows:
                order.append(label)
                rows[label] = {"wall": [], "cpu": [], "us": []}
            rows[label]["wall"].append(int(wall.replace(",", "")))
            rows[label]["cpu"].append(int(cpu.replace(",", "")))
            rows[label]["us"].append(float(micros))
    peer = []
    for path in sorted(glob.glob(os.path.join(log_dir, "openssl-*.txt"))):
        match = re.search(r"Ed25519\)\s+\S+\s+\S+\s+[\d.]+\s+([\d.]+)", open(path).read())
        if match:
            peer.append(float(match.group(1)))
    runs = len(glob.glob(os.path.join(log_dir, "auth-bench-*.txt")))
    command = open(os.path.join(log_dir, "auth.cmd")).read().strip() if os.path.exists(
        os.path.join(log_dir, "auth.cmd")) else "auth-bench"
    print(f"`{command}`, {runs} round(s) alternating with `openssl speed ed25519`, median (min–max); "
          f"{machine(log_dir)}.")
    print()
    print("| measurement | per second of wall time | per second of CPU time | µs of CPU each |")
    print("|---|---:|---:|---:|")
    for label in order:
        r = rows[label]
        print(f"| {label} | {cell(r['wall'], 0)} | {cell(r['cpu'], 0)} | {cell(r['us'], 2)} |")
    if peer:
        print(f"| peer: `openssl speed ed25519` verify, same core, same minutes | {cell(peer, 0)} | | |")


def upload(log_dir, data_path):
    runs = {}
    for path in glob.glob(os.path.join(log_dir, "upload-*-*.json")):
        try:
            with open(path) as f:
                run = json.load(f)
        except (OSError, ValueError):
            continue
        runs.setdefault(run["size_mib"], []).append(run)
    print(f"`bench/upload/run.sh SIZE_MIB` for each size, fresh `flotilla up` each run, median "
          f"(min–max); {machine(log_dir)}. No peer runs beside it: the course's upload path "
          f"(Flask + GridFS) is not recreated here; the goals are absolute (≥ 200 MB/s, RSS "
          f"growth < 64 MiB whatever the size). RSS against file size is plotted in "
          f"[docs/bench/upload-rss.svg](docs/bench/upload-rss.svg).")
    print()
    print("| file | throughput (curl `speed_upload`) | RSS before | RSS peak | RSS growth |")
    print("|---:|---:|---:|---:|---:|")
    peak, growth = [], []
    for size in sorted(runs):
        rs = runs[size]
        before = [r["rss_before_kib"] / 1024 for r in rs]
        peaks = [r["rss_peak_kib"] / 1024 for r in rs]
        grows = [(r["rss_peak_kib"] - r["rss_before_kib"]) / 1024 for r in rs]
        print(f"| {size} MiB | {cell([r['mb_s'] for r in rs], 0, 'MB/s')} | {cell(before, 1, 'MiB')} | "
              f"{cell(peaks, 1, 'MiB')} | {cell(grows, 1, 'MiB')} |")
        peak.append([size, *spread(peaks)])
        growth.append([size, *spread(grows)])
    try:
        skipped = [line.strip() for line in open(os.path.join(log_dir, "skipped.txt")) if line.strip()]
    except OSError:
        skipped = []
    if skipped:
        print()
        print("Not measured here: " + "; ".join(skipped) + " (free disk: the file, its copy in "
              "the blob store and flotilla's reserve must fit).")
    with open(data_path, "w") as f:
        json.dump({"bench": "upload", "series": [{"name": "peak RSS", "points": peak},
                                                 {"name": "RSS growth (peak − before)", "points": growth}]}, f)


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "bus" and len(sys.argv) == 4:
        bus(sys.argv[2], sys.argv[3])
    elif kind == "auth" and len(sys.argv) == 3:
        auth(sys.argv[2])
    elif kind == "upload" and len(sys.argv) == 4:
        upload(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
