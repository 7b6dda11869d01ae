//! Memory stays flat however long the input: the peak resident set of a process that
//! converts a 10-minute file is within a small margin of one that converts 10 seconds.
//!
//! Each conversion runs in a fresh child process (this test binary again, running only
//! the ignored `convert_in_child` helper), because peak RSS is per process and the other
//! tests in this binary would blur it.

mod support;

use std::path::Path;
use std::process::Command;

use support::{args, make};
use tokio_util::sync::CancellationToken;

const CHILD_INPUT: &str = "CONVERTER_MEMORY_TEST_INPUT";

/// Growth allowed between the short and the long input. The long one has 60 times
/// more audio; the only thing that grows with it is the MP4 sample index (≈ 100 KB
/// here), so a leak or a buffered output (≈ 5 MB of MP3) would cross this.
const ALLOWED_GROWTH_KIB: u64 = 2 * 1024;

#[test]
#[ignore = "helper: run in a child process by peak_memory_does_not_grow_with_input_length"]
fn convert_in_child() {
    let input = std::env::var(CHILD_INPUT).expect("run by the parent test only");
    let source = std::fs::File::open(&input).expect("open input");
    let output = std::fs::File::create(format!("{input}.mp3")).expect("create output");
    let report = converter::convert(source, Some("mp4"), output, &CancellationToken::new())
        .expect("converts");
    println!("DURATION={}", report.duration_secs);
    println!("PEAK_RSS_KIB={}", peak_rss_kib());
}

/// VmHWM: the most resident memory this process has had.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn peak_rss_converting(input: &Path) -> (u64, f64) {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["convert_in_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_INPUT, input)
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing in: {stdout}"))
            .to_owned()
    };
    (
        value("PEAK_RSS_KIB=").parse().expect("number"),
        value("DURATION=").parse().expect("number"),
    )
}

#[test]
#[cfg(target_os = "linux")]
fn peak_memory_does_not_grow_with_input_length() {
    if support::ffmpeg().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // A low rate keeps the debug-build conversion of 10 minutes quick; the container,
    // codec and code path are the same as for any AAC upload.
    let tone = |secs: u32| {
        vec![
            "-f".to_owned(),
            "lavfi".to_owned(),
            "-i".to_owned(),
            format!("sine=frequency=440:sample_rate=8000:duration={secs}"),
        ]
    };
    let (short, long) = (tone(10), tone(600));
    let short = make(dir.path(), "short.mp4", &args(&short, &["-c:a", "aac"]));
    let long = make(dir.path(), "long.mp4", &args(&long, &["-c:a", "aac"]));

    let (short_rss, short_secs) = peak_rss_converting(&short);
    let (long_rss, long_secs) = peak_rss_converting(&long);
    eprintln!("peak RSS: 10 s input {short_rss} KiB, 10 min input {long_rss} KiB");
    assert!((short_secs - 10.0).abs() < 0.1 && (long_secs - 600.0).abs() < 0.1);
    assert!(
        long_rss <= short_rss + ALLOWED_GROWTH_KIB,
        "peak RSS grew from {short_rss} KiB (10 s) to {long_rss} KiB (10 min)"
    );
}
