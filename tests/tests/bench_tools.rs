//! The tools behind `bench/run-all.sh` that turn results into BENCHMARKS.md: the SVG
//! plotter (`bench/tools/plot.py`, `plots.py`), the regeneration of the marked parts of
//! the document (`bench/tools/regen.py`) and the blog's report (`bench/blog/report.py`),
//! run with python3 on sample results — the SVGs parsed back with `xml.etree`. (Running
//! `run-all.sh --quick` itself takes minutes and needs nginx, wrk, node and ffmpeg: it is
//! a manual smoke test, see bench/run-all.sh.)
//!
//! Without python3 the tests are skipped with a message — except under CI=true.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn have_python() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || !test_support::under_ci(),
        "CI=true but python3 is missing"
    );
    if !ok {
        eprintln!("skipped: python3 is missing");
    }
    ok
}

/// Runs python3 with `args` in the repository; (success, stdout, stderr).
fn python(args: &[&str]) -> (bool, String, String) {
    let output = Command::new("python3")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(repo())
        .args(args)
        .output()
        .expect("python3 runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The series of an SVG as plot.py draws them, read back with xml.etree: per
/// `<g class="series">`, its name, its dots, its polyline's points and the dots' titles.
fn series_of(svg: &Path) -> serde_json::Value {
    let script = r#"
import json, sys, xml.etree.ElementTree as ET
ns = {"s": "http://www.w3.org/2000/svg"}
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
out = []
for g in root.iterfind(".//s:g[@class='series']", ns):
    line = g.find("s:polyline", ns)
    out.append({
        "name": g.get("data-name"),
        "dots": len(g.findall("s:circle", ns)),
        "line_points": len(line.get("points").split()),
        "titles": [c.find("s:title", ns).text for c in g.findall("s:circle", ns)],
    })
legend = root.find(".//s:g[@class='legend']", ns)
print(json.dumps({"series": out, "legend": [t.text for t in legend.iterfind("s:text", ns)],
                  "x_label": root.find(".//s:text[@class='x-label']", ns).text}))
"#;
    let (ok, stdout, stderr) = python(&["-c", script, &svg.display().to_string()]);
    assert!(
        ok,
        "{} is not an SVG plot.py would write: {stderr}",
        svg.display()
    );
    serde_json::from_str(&stdout).expect("JSON")
}

#[test]
fn plot_draws_one_line_per_system_and_a_dot_per_point() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({
            "title": "Throughput <against> connections",
            "x_label": "connections & more",
            "y_label": "requests/s",
            "x_log": true,
            "series": [
                {"name": "nginx", "points": [[4, 9000], [8, 20000], [16, 28000], [32, 31000], [64, 31500]]},
                {"name": "flotilla \"gateway\"", "points": [[8, 15000], [16, 21000], [32, 24000], [64, 24500]]},
                {"name": "haproxy", "points": [[8, 18000], [64, 30000]]},
            ],
        })
        .to_string(),
    )
    .expect("spec written");
    let svg = dir.path().join("out.svg");
    let (ok, _, stderr) = python(&[
        "bench/tools/plot.py",
        &spec.display().to_string(),
        &svg.display().to_string(),
    ]);
    assert!(ok, "plot.py failed: {stderr}");
    let read = series_of(&svg);
    let series = read["series"].as_array().expect("series");
    let shape: Vec<(&str, u64, u64)> = series
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name"),
                s["dots"].as_u64().expect("dots"),
                s["line_points"].as_u64().expect("points"),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("nginx", 5, 5),
            ("flotilla \"gateway\"", 4, 4),
            ("haproxy", 2, 2)
        ]
    );
    assert_eq!(
        read["legend"],
        serde_json::json!(["nginx", "flotilla \"gateway\"", "haproxy"])
    );
    assert_eq!(read["x_label"], "connections & more");
}

#[test]
fn plots_come_from_the_medians_of_the_results_and_only_for_benchmarks_that_ran() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    // [x, min, median, max], as gateway-sweep.sh writes them.
    std::fs::write(
        data.join("gateway-sweep.json"),
        serde_json::json!({"series": [
            {"name": "nginx", "points": [[8, 1, 100, 1000], [64, 2, 200, 2000], [128, 3, 300, 3000]]},
            {"name": "gateway", "points": [[8, 5, 50, 500], [64, 6, 60, 600], [128, 7, 70, 700]]},
        ]})
        .to_string(),
    )
    .expect("written");
    // As convert-bench --json writes it.
    std::fs::write(
        data.join("convert.json"),
        r#"{"runs": 3, "lengths": [{"length_s": 10, "in_process_s": [0.1, 0.2, 0.3], "ffmpeg_s": [0.2, 0.25, 0.4]}, {"length_s": 60, "in_process_s": [0.8, 0.9, 1.0], "ffmpeg_s": [1.0, 1.1, 1.3]}]}"#,
    )
    .expect("written");
    let plots = dir.path().join("plots");
    let (ok, _, stderr) = python(&[
        "bench/tools/plots.py",
        &data.display().to_string(),
        &plots.display().to_string(),
    ]);
    assert!(ok, "plots.py failed: {stderr}");
    let mut written: Vec<String> = std::fs::read_dir(&plots)
        .expect("plots dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["convert-length.svg", "gateway-connections.svg"]);
    let gateway = series_of(&plots.join("gateway-connections.svg"));
    assert_eq!(
        gateway["series"][0]["titles"],
        serde_json::json!(["nginx: 8 → 100", "nginx: 64 → 200", "nginx: 128 → 300"])
    );
    assert_eq!(gateway["series"][1]["dots"], 3);
    let convert = series_of(&plots.join("convert-length.svg"));
    assert_eq!(convert["series"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        convert["series"][1]["titles"],
        serde_json::json!(["ffmpeg command: 10 → 0.25", "ffmpeg command: 60 → 1.1"])
    );
}

const DOCUMENT: &str = "# Benchmarks\n\n## Blog\n\nHand-written intro, kept.\n\n\
<!-- bench:blog:begin -->\n| old | table |\n|---|---|\n| 1 | 2 |\n<!-- bench:blog:end -->\n\n\
Reading it: prose after the table, kept byte for byte.\n\n## Bus\n\n\
<!-- bench:bus:begin -->\nold bus figures, no new section: kept\n<!-- bench:bus:end -->\n\nThe end.\n";

fn regen(document: &str, sections: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let doc = dir.path().join("BENCHMARKS.md");
    std::fs::write(&doc, document).expect("written");
    let sections_dir = dir.path().join("sections");
    std::fs::create_dir(&sections_dir).expect("dir");
    for (name, text) in sections {
        std::fs::write(sections_dir.join(format!("{name}.md")), text).expect("written");
    }
    let (ok, _, stderr) = python(&[
        "bench/tools/regen.py",
        &doc.display().to_string(),
        &sections_dir.display().to_string(),
    ]);
    (ok, std::fs::read_to_string(&doc).expect("read"), stderr)
}

#[test]
fn regeneration_replaces_the_marked_parts_and_keeps_the_prose() {
    if !have_python() {
        return;
    }
    let (ok, text, stderr) = regen(
        DOCUMENT,
        &[
            ("blog", "| new | table |\n|---|---|\n| 3 | 4 |\n"),
            ("convert", "no marker for this one\n"),
        ],
    );
    assert!(ok, "regen.py failed: {stderr}");
    assert_eq!(
        text,
        DOCUMENT.replace(
            "| old | table |\n|---|---|\n| 1 | 2 |\n",
            "| new | table |\n|---|---|\n| 3 | 4 |\n"
        )
    );
    assert!(stderr.contains("regenerated blog"), "{stderr}");
    assert!(stderr.contains("no markers for: convert"), "{stderr}");
}

#[test]
fn regeneration_refuses_unbalanced_markers_and_changes_nothing() {
    if !have_python() {
        return;
    }
    for broken in [
        DOCUMENT.replace("<!-- bench:blog:end -->", ""),
        DOCUMENT.replace("<!-- bench:bus:begin -->", ""),
        format!("{DOCUMENT}<!-- bench:blog:begin -->\n<!-- bench:blog:end -->\n"),
    ] {
        let (ok, text, stderr) = regen(&broken, &[("blog", "new\n")]);
        assert!(!ok, "accepted: {broken}");
        assert_eq!(text, broken);
        assert!(stderr.contains("nothing changed"), "{stderr}");
    }
}

#[test]
fn blog_report_gives_median_and_range_of_the_rounds_for_both_systems() {
    if !have_python() {
        return;
    }
    let run = |creates: f64, lost: u64, p99: f64| {
        serde_json::json!({
            "latency": {
                "post_visible_ms": {"p50": 2.0, "p99": p99, "max": p99 + 1.0, "samples": 200},
                "comment_moderated_ms": {"p50": 3.0, "p99": p99 * 2.0, "max": p99 * 3.0, "samples": 200},
                "timeouts": 0,
            },
            "races": {"races": 500, "acknowledged": 500, "lost": lost,
                      "failed": {"post_failed": 0, "comment_failed": 0, "error": 0}, "seconds": 3.0},
            "reads": {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "requests": 1, "non_2xx": 0, "socket_errors": 0},
            "creates": {"rps": creates, "p50_ms": 1.0, "p99_ms": 2.0, "requests": 1, "non_2xx": 0, "socket_errors": 0},
        })
    };
    let machine = serde_json::json!({"nproc": 2, "model": "CPU", "memory_mib": 1024,
                                     "load": [1.0, 2.0, 3.0], "utc": "2026-12-05 15:00 UTC"});
    let results = serde_json::json!({
        "bench": "blog",
        "command": "bench/blog.sh 3 10 200 500",
        "params": {"rounds": 3, "seconds": 10, "samples": 200, "races": 500, "clients": 16},
        "machine_before": machine, "machine_after": machine,
        "versions": {"flotilla": "flotilla 0.1.0", "node": "v20", "nginx": "1.22.1"},
        "rounds": [
            {"original": run(180.0, 5, 40.0), "flotilla": run(1800.0, 0, 8.0)},
            {"original": run(200.0, 7, 44.0), "flotilla": run(2200.0, 0, 9.0)},
            {"original": run(170.0, 4, 42.0), "flotilla": {"error": "did not start"}},
        ],
        "ceiling": {"rps": 20000.0},
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blog.json");
    std::fs::write(&path, results.to_string()).expect("written");
    let (ok, stdout, stderr) = python(&["bench/blog/report.py", &path.display().to_string()]);
    assert!(ok, "report.py failed: {stderr}");
    // Median (min–max) over the rounds that ran; the ratio of the medians.
    assert!(
        stdout.contains(
            "| creates/s: `POST /posts/create`, wrk, 16 connections | 180 (170–200) | 2,000 (1,800–2,200) | 11.1× |"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "| race comments lost, of 500 acknowledged create-then-comment races | 5 (4–7) | 0 |  |"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "| post created → visible, p99 | 42.0 ms (40.0–44.0) | 8.5 ms (8.0–9.0) | 4.9× |"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("round 3, flotilla: did not finish (did not start)"),
        "{stdout}"
    );
    assert!(stdout.contains("made 20,000 requests/s"), "{stdout}");
}
