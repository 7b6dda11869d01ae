//! What the binary gives away: no secret from the environment in any help text, and
//! every file it creates readable by its owner only.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// Secret-bearing settings, each with a value whose secret part is easy to find.
const SECRETS: [(&str, &str); 5] = [
    (
        "FLOTILLA_DATABASE_URL",
        "postgres://flotilla:db-s3cret@db.internal/flotilla",
    ),
    ("FLOTILLA_BUS_URL", "amqp://flotilla:bus-s3cret@mq:5672/%2f"),
    ("FLOTILLA_SMTP_URL", "smtps://mailer:smtp-s3cret@mail:465"),
    ("FLOTILLA_ADMIN_PASSWORD", "admin-s3cret"),
    ("FLOTILLA_TOKEN", "token-s3cret"),
];

#[test]
fn help_texts_never_print_a_secret_from_the_environment() {
    for args in [
        &["up", "--help"][..],
        &["serve", "--help"],
        &["user", "add", "--help"],
        &["query", "rebuild", "--help"],
        &["bus", "dlq", "list", "--help"],
        &["client", "--help"],
    ] {
        let mut command = Command::new(BIN);
        command.args(args);
        for (name, value) in SECRETS {
            command.env(name, value);
        }
        let output = command.output().expect("flotilla runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {text}");
        assert!(
            !text.contains("s3cret"),
            "`flotilla {}` shows a secret:\n{}",
            args.join(" "),
            text.lines()
                .filter(|line| line.contains("s3cret"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[cfg(unix)]
#[test]
fn the_data_directory_and_every_file_in_it_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().expect("tempdir");
    let data_dir = root.path().join("data");
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env_remove("FLOTILLA_DATABASE_URL")
        .env_remove("FLOTILLA_BUS_URL")
        .env_remove("FLOTILLA_SMTP_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reads the ready line");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .map(str::to_owned);
    // A signup writes the accounts database as a user would.
    if let Some(url) = &url {
        let _ = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/json",
            ])
            .args([
                "-d",
                r#"{"email":"perm@example.com","password":"password123"}"#,
            ])
            .arg(format!("{url}/signup"))
            .status();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.is_some(), "flotilla up did not get ready: {line:?}");

    let mut seen = Vec::new();
    let mut public = Vec::new();
    walk(&data_dir, &mut |path, mode| {
        seen.push(path.strip_prefix(&data_dir).unwrap_or(path).to_owned());
        if mode & 0o077 != 0 {
            public.push(format!("{} {:o}", path.display(), mode & 0o777));
        }
    });
    let mode = std::fs::metadata(&data_dir)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "data directory mode");
    for expected in ["auth.db", "bus.db", "jwt-signing.pem"] {
        assert!(
            seen.iter().any(|path| path == Path::new(expected)),
            "{expected} not in {seen:?}"
        );
    }
    assert!(public.is_empty(), "readable by others: {public:#?}");
}

#[cfg(unix)]
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, u32)) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        visit(&path, metadata.permissions().mode());
        if metadata.is_dir() {
            walk(&path, visit);
        }
    }
}
