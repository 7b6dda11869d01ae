#!/usr/bin/env python3
"""Facts about the machine a benchmark ran on, written beside its figures: cores, CPU model,
memory, load average (1, 5, 15 min) and the time. Prints one JSON object.

    machine.py            the facts now
"""
import datetime
import json
import os


def facts():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_mib = None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    memory_mib = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "model": model,
        "memory_mib": memory_mib,
        "load": [round(x, 2) for x in os.getloadavg()],
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def describe(before, after=None):
    """One Markdown sentence: the machine and its load before (and after) the run."""
    text = (
        f"{before['utc']}, {before['nproc']} cores ({before['model']}"
        + (f", {before['memory_mib']} MiB" if before.get("memory_mib") else "")
        + f"), load average {' '.join(map(str, before['load']))} before"
    )
    if after:
        text += f", {' '.join(map(str, after['load']))} after"
    return text


if __name__ == "__main__":
    print(json.dumps(facts()))
