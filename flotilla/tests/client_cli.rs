//! `flotilla client` as a user runs it: the real binary against a running system, with its
//! own config directory. Each error path prints exactly one line on stderr and exits with
//! the code of its class (see `client::EXIT_CODES`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const EMAIL: &str = "cli-user@example.com";
const PASSWORD: &str = "Cli-pass-123";

/// Runs `flotilla client ARGS` with `config_home` as XDG_CONFIG_HOME, nothing from the
/// caller's environment that would point it elsewhere, and `stdin` as its input.
fn client(config_home: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("client")
        .args(args)
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("FLOTILLA_GATEWAY_URL")
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_CLIENT_CONFIG")
        .env_remove("FLOTILLA_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla runs");
    let mut input = child.stdin.take().expect("piped stdin");
    // The child may exit before reading (an error first): ignore a broken pipe.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("flotilla finishes")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the command failed with `code` and exactly one line on stderr, containing
/// `words`; returns that line.
fn one_error_line(output: &Output, code: i32, words: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr:?}");
    assert!(stderr.contains(words), "{words:?} in {stderr:?}");
    assert!(!stderr.contains(".part"), "{stderr}");
    stderr
}

fn video(dir: &Path) -> PathBuf {
    let out = dir.join("clip.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-hide_banner", "-loglevel", "error"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=1"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10:duration=1",
        ])
        .args(["-c:a", "aac", "-c:v", "mpeg4", "-shortest"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(status.success());
    out
}

async fn sign_up(system: &test_support::TestSystem) {
    let response = system
        .client
        .post(system.url("/signup"))
        .json(&serde_json::json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .expect("signup");
    assert_eq!(response.status(), 201);
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_remembers_its_gateway_follows_jobs_and_fails_in_one_line() {
    let system = test_support::spawn_system().await;
    sign_up(&system).await;
    let home = tempfile::tempdir().expect("config home");
    let work = tempfile::tempdir().expect("work dir");
    let home = home.path();

    // Not logged in yet: auth class.
    let output = client(home, &["--gateway", &system.base_url, "jobs"], "");
    one_error_line(&output, 3, "not logged in");

    // The gateway is down: found before the password is asked (stdin stays unread).
    let down = closed_port_url();
    let output = client(
        home,
        &["--gateway", &down, "login", "--email", EMAIL],
        &format!("{PASSWORD}\n"),
    );
    one_error_line(&output, 5, "cannot reach the gateway");

    // Login with --gateway, from stdin without a terminal; the file is 0600.
    let output = client(
        home,
        &["--gateway", &system.base_url, "login", "--email", EMAIL],
        &format!("{PASSWORD}\n"),
    );
    assert!(output.status.success(), "{output:?}");
    let saved = home.join("flotilla").join("client.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved)
            .expect("saved")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A wrong password: auth class, one line.
    let output = client(
        home,
        &["--gateway", &system.base_url, "login", "--email", EMAIL],
        "wrong-password\n",
    );
    one_error_line(&output, 3, "");

    // Upload without --gateway: the saved one is used; --wait follows the job to done
    // and --download fetches the MP3.
    let clip = video(work.path());
    let mp3_dir = work.path().join("mp3s");
    let output = client(
        home,
        &[
            "upload",
            clip.to_str().expect("utf-8 path"),
            "--wait",
            "--download",
            mp3_dir.to_str().expect("utf-8 path"),
        ],
        "",
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed = stdout(&output);
    let fid = printed
        .split_whitespace()
        .find(|word| word.starts_with("mp3-"))
        .unwrap_or_else(|| panic!("done with the MP3 id: {printed}"))
        .to_owned();
    let downloaded = mp3_dir.join(format!("{fid}.mp3"));
    assert!(
        std::fs::metadata(&downloaded).expect("downloaded").len() > 1000,
        "an MP3 in {downloaded:?}"
    );

    // A file that is not media: the job fails, exit code 6, the reason printed.
    let text = work.path().join("notes.txt");
    std::fs::write(
        &text,
        "these are not the frames you are looking for\n".repeat(50),
    )
    .expect("write");
    let output = client(
        home,
        &["upload", text.to_str().expect("utf-8 path"), "--wait"],
        "",
    );
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    assert!(
        stdout(&output).contains("notes.txt: failed: "),
        "{output:?}"
    );
    // Progress lines come first (queued, converting); the error is one line, the last.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("flotilla: "))
        .collect();
    assert_eq!(errors, ["flotilla: 1 of 1 conversions failed"], "{stderr}");

    // `jobs --json` is JSON Lines, one per job; the table names both files.
    let output = client(home, &["jobs", "--json"], "");
    assert!(output.status.success(), "{output:?}");
    let jobs: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let done = jobs
        .iter()
        .find(|job| job["status"] == "done")
        .expect("the done job");
    let job_id = done["job_id"].as_str().expect("job id").to_owned();
    let output = client(home, &["jobs"], "");
    let table = stdout(&output);
    assert!(
        table.starts_with("JOB") && table.contains("clip.mp4") && table.contains("s ago"),
        "{table}"
    );

    // `download` by job id.
    let by_job = work.path().join("by-job.mp3");
    let output = client(
        home,
        &[
            "download",
            &job_id,
            "-o",
            by_job.to_str().expect("utf-8 path"),
        ],
        "",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read(&by_job).expect("by job"),
        std::fs::read(&downloaded).expect("by fid")
    );

    // Unknown ids and missing files: not-found class, one line each.
    let output = client(home, &["download", "no-such-job"], "");
    one_error_line(&output, 4, "no job or MP3 no-such-job");
    let output = client(home, &["jobs", "no-such-job"], "");
    one_error_line(&output, 4, "no-such-job");
    let output = client(home, &["download", "mp3-nothing"], "");
    one_error_line(&output, 4, "mp3-nothing");
    let output = client(home, &["upload", "/nonexistent/clip.mp4"], "");
    one_error_line(
        &output,
        4,
        "/nonexistent/clip.mp4: no such file or directory",
    );

    // The blog: a post, a comment, the list.
    let output = client(home, &["post", "Hello from the CLI"], "");
    assert!(output.status.success(), "{output:?}");
    let post_id = stdout(&output).trim().to_owned();
    assert!(!post_id.is_empty());
    let output = client(home, &["comment", &post_id, "nice post"], "");
    assert!(output.status.success(), "{output:?}");
    let output = client(home, &["posts", "--json"], "");
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output)
            .lines()
            .any(|line| line.contains(&post_id) && line.contains("Hello from the CLI")),
        "{output:?}"
    );

    // The gateway goes away: unreachable class, one line, through the saved gateway.
    system.stop().await.expect("stops");
    let output = client(home, &["jobs"], "");
    one_error_line(&output, 5, "cannot reach the gateway");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let output = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("complete") && script.contains("--password-stdin"));
    let output = Command::new(BIN).arg("man").output().expect("runs");
    assert!(output.status.success());
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH flotilla"),
        "{page}"
    );

    let output = Command::new(BIN)
        .args(["client", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Exit codes: 0 success"), "{help}");
    assert!(!help.contains("FLOTILLA_GATEWAY_URL="), "{help}");
    let output = Command::new(BIN)
        .args(["client", "frobnicate"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
}
