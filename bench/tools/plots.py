#!/usr/bin/env python3
"""BENCHMARKS.md's plots from bench/run-all.sh's data files, one SVG each (plot.py draws).

    plots.py DATA_DIR OUT_DIR

  gateway-sweep.json → OUT_DIR/gateway-connections.svg  requests/s against wrk connections
  bus.json           → OUT_DIR/bus-payload.svg          msgs/s against payload size
  convert.json       → OUT_DIR/convert-length.svg       seconds against input length
  upload.json        → OUT_DIR/upload-rss.svg           RSS against file size
A data file that is missing (its benchmark was not run or failed) leaves its plot as it
was. Points are [x, min, median, max]; the line goes through the medians.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot import render  # noqa: E402


def medians(points):
    return [[p[0], p[2] if len(p) >= 4 else p[1]] for p in points]


def specs(data_dir):
    def load(name):
        try:
            with open(os.path.join(data_dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    out = {}
    gateway = load("gateway-sweep.json")
    if gateway:
        out["gateway-connections"] = {
            "title": "Reverse proxy throughput against connections",
            "x_label": "connections (wrk -c)", "y_label": "requests/s (median of rounds)", "x_log": True,
            "series": [{"name": s["name"], "points": medians(s["points"])} for s in gateway["series"]],
        }
    bus = load("bus.json")
    if bus and bus.get("series"):
        out["bus-payload"] = {
            "title": "Event bus throughput against payload size",
            "x_label": "payload (bytes)", "y_label": "messages/s (median of rounds)", "x_log": True,
            "series": [{"name": s["name"], "points": medians(s["points"])} for s in bus["series"]],
        }
    convert = load("convert.json")
    if convert and convert.get("lengths"):
        rows = convert["lengths"]
        out["convert-length"] = {
            "title": "Conversion time against input length (AAC → MP3)",
            "x_label": "input length (s of audio)", "y_label": "wall time (s, median of runs)",
            "series": [
                {"name": "in-process (symphonia + LAME)", "points": [[r["length_s"], r["in_process_s"][1]] for r in rows]},
                {"name": "ffmpeg command", "points": [[r["length_s"], r["ffmpeg_s"][1]] for r in rows]},
            ],
        }
    upload = load("upload.json")
    if upload and any(s["points"] for s in upload.get("series", [])):
        out["upload-rss"] = {
            "title": "Gateway memory against upload size",
            "x_label": "file size (MiB)", "y_label": "MiB (median of runs)", "x_log": True,
            "series": [{"name": s["name"], "points": medians(s["points"])} for s in upload["series"]],
        }
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plots.py DATA_DIR OUT_DIR")
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    for name, spec in specs(data_dir).items():
        with open(os.path.join(out_dir, f"{name}.svg"), "w") as f:
            f.write(render(spec))
        print(f"wrote {os.path.join(out_dir, name + '.svg')}", file=sys.stderr)


if __name__ == "__main__":
    main()
