//! `FLOTILLA_SCHED_POLICY`: every thread of a running `flotilla up` — the runtime's
//! workers, SQLite's, the bus's — is under the policy asked for (SCHED_OTHER by
//! default), read from `/proc`, and a policy that does not exist stops the process at
//! start with one line naming the variable.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

/// The kernel's numbers for the policies (`/proc/PID/task/TID/stat`, field 41).
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// Starts `flotilla up` with `policy` (unset: the default), waits for its ready line and
/// returns each thread's name and policy. It is started under the policy it is not
/// asked for (by `chrt`, util-linux's), so a policy that was not applied shows.
fn thread_policies(dir: &Path, policy: Option<&str>) -> Vec<(String, u32)> {
    let start_under = if policy == Some("batch") { "-o" } else { "-b" };
    let mut command = Command::new("chrt");
    command
        .args([start_under, "0"])
        .arg(test_support::flotilla_binary())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .env_remove("FLOTILLA_SCHED_POLICY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(policy) = policy {
        command.env("FLOTILLA_SCHED_POLICY", policy);
    }
    let mut child = command.spawn().expect("flotilla starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a line on stdout");
    assert!(line.contains("ready"), "unexpected first line: {line}");
    let tasks = format!("/proc/{}/task", child.id());
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).expect("procfs") {
        let task = task.expect("a task").path();
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // `PID (COMM) STATE ...`: fields count from after the name's closing parenthesis.
        let (name, rest) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
            .expect("stat's shape");
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|field| field.parse().ok())
            .expect("field 41, the policy");
        threads.push((name.to_owned(), policy));
    }
    child.kill().expect("stopped");
    child.wait().expect("reaped");
    threads
}

#[test]
fn every_thread_of_up_runs_under_sched_other_by_default_and_batch_when_asked() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let threads = thread_policies(dir.path(), None);
    for name in ["tokio-rt-worker", "sqlx-sqlite-wor", "bus-writer"] {
        assert!(
            threads.iter().any(|(thread, _)| thread == name),
            "no {name} thread among {threads:?}"
        );
    }
    assert!(
        threads.iter().all(|(_, policy)| *policy == SCHED_OTHER),
        "every thread under SCHED_OTHER, though started under SCHED_BATCH: {threads:?}"
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let threads = thread_policies(dir.path(), Some("batch"));
    assert!(threads.len() > 5, "{threads:?}");
    assert!(
        threads.iter().all(|(_, policy)| *policy == SCHED_BATCH),
        "every thread under SCHED_BATCH: {threads:?}"
    );
}

#[test]
fn a_policy_that_does_not_exist_is_refused_at_start_in_one_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(test_support::flotilla_binary())
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FLOTILLA_SCHED_POLICY", "realtime")
        .output()
        .expect("flotilla runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("FLOTILLA_SCHED_POLICY") && stderr.contains("batch"),
        "names the variable and the choices: {stderr}"
    );
}
