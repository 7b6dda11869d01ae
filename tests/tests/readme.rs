//! The README is a test: its shell blocks run literally, in order, in one bash session at
//! the repository root, the way a reader pastes them — so the docs cannot drift from the
//! product. The same goes for deploy/README.md and docs/DEPLOY.md.
//!
//! What a command must do to pass:
//! - exit 0;
//! - every `curl` in it answers 2xx, or the status its trailing comment starts with
//!   (`# 201 …`, `# 401 …`);
//! - where that comment shows a JSON answer, the answer has it: `{"status":"OK"}` (these
//!   members with these values) or `{"id","title"}` / `[{"seq","type","data"}]` (these
//!   keys, in the object or in every element).
//!
//! Directives in an HTML comment right before a block (`<!-- readme-test: … -->`, one per
//! line) say what a reader does around it — never what the commands are:
//! - `skip "REASON"`: the block is not run (printed by name: only for what a test cannot
//!   have, such as a Kubernetes cluster or a registry);
//! - `skip-command "PREFIX" "REASON"`: the same for one command;
//! - `background "PREFIX" until "TEXT"`: the command runs on, and the next one waits until
//!   it prints TEXT (a server's ready line);
//! - `stop "PREFIX"`: the background command gets SIGTERM (Ctrl-C) and must exit 0;
//! - `stdin "PREFIX" "TEXT"`: what the reader types at the command's prompt;
//! - `paste NAME "SHELL"`: the value a reader copies from an earlier answer (a token, a file
//!   id) — SHELL finds it (the last HTTP answer is in `$README_TEST_DIR/last-answer`);
//!   `$NAME` and a bare `NAME` in the block become it;
//! - `fixture "PATH" video|text`: a file the reader brings (a video made with ffmpeg, or
//!   some text that is not media).
//!
//! Heavy (it builds the release binary as the README's first command does), so it runs
//! under `CI=true` or with `FLOTILLA_TEST_README=1`.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

const DOCUMENTS: &[&str] = &["README.md", "deploy/README.md", "docs/DEPLOY.md"];

#[test]
fn the_readme_runs_as_written() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !in_ci && std::env::var("FLOTILLA_TEST_README").is_err() {
        eprintln!("skipped: set FLOTILLA_TEST_README=1 (or CI=true) to run the README");
        return;
    }
    let root = repository_root();
    let documents: Vec<Document> = DOCUMENTS
        .iter()
        .filter(|name| root.join(name).exists())
        .map(|name| {
            Document::parse(
                name,
                &std::fs::read_to_string(root.join(name)).expect("readable document"),
            )
        })
        .collect();
    assert!(
        !root.join("flotilla-data").exists(),
        "./flotilla-data exists: the README's commands start from a fresh clone; move it aside"
    );
    let _cleanup = NewEntries::remember(&root);
    let mut session = Session::start(&root);
    for document in &documents {
        for block in &document.blocks {
            session.run_block(document, block);
        }
    }
    session.stop_all();
    println!("{}", session.summary());
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

// ---------------------------------------------------------------------------------------
// Reading the documents

#[derive(Debug, Clone, PartialEq)]
enum Directive {
    Skip(String),
    SkipCommand { prefix: String, reason: String },
    Background { prefix: String, until: String },
    Stop(String),
    Stdin { prefix: String, text: String },
    Paste { name: String, shell: String },
    Fixture { path: String, kind: String },
}

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    directives: Vec<Directive>,
    /// (line, command) with `\` continuations joined.
    commands: Vec<(usize, String)>,
}

#[derive(Debug)]
struct Document {
    name: String,
    blocks: Vec<Block>,
}

impl Document {
    fn parse(name: &str, text: &str) -> Document {
        let lines: Vec<&str> = text.lines().collect();
        let mut blocks = Vec::new();
        let mut pending: Vec<Directive> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i].trim();
            if let Some(rest) = line.strip_prefix("<!-- readme-test:") {
                // The comment may span lines, up to `-->`.
                let mut body = String::new();
                let mut rest = rest.to_owned();
                loop {
                    if let Some(end) = rest.find("-->") {
                        body.push_str(&rest[..end]);
                        break;
                    }
                    body.push_str(&rest);
                    body.push('\n');
                    i += 1;
                    assert!(i < lines.len(), "{name}: unterminated readme-test comment");
                    rest = lines[i].to_owned();
                }
                for directive in body.lines().filter(|l| !l.trim().is_empty()) {
                    pending.push(parse_directive(directive).unwrap_or_else(|e| {
                        panic!(
                            "{name}:{}: bad readme-test directive {directive:?}: {e}",
                            i + 1
                        )
                    }));
                }
                i += 1;
                continue;
            }
            if line == "```sh" || line == "```bash" || line == "```shell" {
                let start = i + 1;
                let mut commands = Vec::new();
                let mut current: Option<(usize, String)> = None;
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    let raw = lines[i];
                    match current.as_mut() {
                        Some((_, text)) => text.push_str(raw.trim_start()),
                        None if raw.trim().is_empty() || raw.trim().starts_with('#') => {}
                        None => current = Some((i + 1, raw.trim().to_owned())),
                    }
                    if let Some((at, text)) = current.take() {
                        if let Some(joined) = text.strip_suffix('\\') {
                            current = Some((at, format!("{} ", joined.trim_end())));
                        } else {
                            commands.push((at, text));
                        }
                    }
                    i += 1;
                }
                blocks.push(Block {
                    line: start,
                    directives: std::mem::take(&mut pending),
                    commands,
                });
            } else if !line.is_empty() && !pending.is_empty() {
                panic!(
                    "{name}:{}: a readme-test comment must come right before a shell block",
                    i + 1
                );
            }
            i += 1;
        }
        Document {
            name: name.to_owned(),
            blocks,
        }
    }
}

/// Words and "quoted strings" (with `\"` and `\\`).
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    Some('\\') => word.push(chars.next().ok_or("dangling backslash")?),
                    Some('"') => break,
                    Some(c) => word.push(c),
                    None => return Err("unterminated quote".into()),
                }
            }
            out.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn parse_directive(text: &str) -> Result<Directive, String> {
    let t = tokens(text)?;
    let words: Vec<&str> = t.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["skip", reason] => Directive::Skip((*reason).to_owned()),
        ["skip-command", prefix, reason] => Directive::SkipCommand {
            prefix: (*prefix).to_owned(),
            reason: (*reason).to_owned(),
        },
        ["background", prefix, "until", until] => Directive::Background {
            prefix: (*prefix).to_owned(),
            until: (*until).to_owned(),
        },
        ["stop", prefix] => Directive::Stop((*prefix).to_owned()),
        ["stdin", prefix, text] => Directive::Stdin {
            prefix: (*prefix).to_owned(),
            text: (*text).to_owned(),
        },
        ["paste", name, shell] => Directive::Paste {
            name: (*name).to_owned(),
            shell: (*shell).to_owned(),
        },
        ["fixture", path, kind @ ("video" | "text")] => Directive::Fixture {
            path: (*path).to_owned(),
            kind: (*kind).to_owned(),
        },
        _ => return Err("unknown directive".into()),
    })
}

/// The command without its trailing comment (a `#` after whitespace, outside quotes), and
/// that comment.
fn split_comment(command: &str) -> (String, Option<String>) {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut previous = ' ';
    for (at, c) in command.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && !single {
            escaped = true;
        } else if c == '\'' && !double {
            single = !single;
        } else if c == '"' && !single {
            double = !double;
        } else if c == '#' && !single && !double && previous.is_whitespace() {
            return (
                command[..at].trim_end().to_owned(),
                Some(command[at + 1..].trim().to_owned()),
            );
        }
        previous = c;
    }
    (command.trim_end().to_owned(), None)
}

/// What the trailing comment says the command answers.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    status: Option<u16>,
    body: Option<BodyShape>,
}

#[derive(Debug, PartialEq)]
enum BodyShape {
    /// These members with these values.
    Members(Value),
    /// An object with these keys.
    Keys(Vec<String>),
    /// An array whose every element has these keys.
    EachKeys(Vec<String>),
}

fn expected(comment: Option<&str>) -> Expected {
    let Some(comment) = comment else {
        return Expected::default();
    };
    let status = comment
        .get(..3)
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .filter(|_| {
            comment[3..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_digit())
        })
        .and_then(|s| s.parse().ok());
    let body = ["[{\"", "{\""]
        .iter()
        .filter_map(|open| comment.find(open))
        .min()
        .and_then(|start| balanced(&comment[start..]))
        .and_then(|json| {
            if let Ok(value) = serde_json::from_str::<Value>(json) {
                return Some(BodyShape::Members(value));
            }
            let (each, inner) = match json.strip_prefix('[') {
                Some(inner) => (true, inner.strip_suffix(']')?),
                None => (false, json),
            };
            let inner = inner.strip_prefix('{')?.strip_suffix('}')?;
            let keys: Option<Vec<String>> = inner
                .split(',')
                .map(|k| {
                    let k = k.trim();
                    k.strip_prefix('"')?
                        .strip_suffix('"')
                        .filter(|k| !k.contains(['"', ':', '{', '[']))
                        .map(str::to_owned)
                })
                .collect();
            let keys = keys?;
            Some(if each {
                BodyShape::EachKeys(keys)
            } else {
                BodyShape::Keys(keys)
            })
        });
    Expected { status, body }
}

/// The text up to the bracket that closes the first one.
fn balanced(text: &str) -> Option<&str> {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[..=at]);
                }
            }
            _ => {}
        }
    }
    None
}

fn check_body(shape: &BodyShape, body: &[u8]) -> Result<(), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not JSON ({e}): {}", excerpt(body)))?;
    let has_keys = |object: &Value, keys: &[String]| -> Result<(), String> {
        let map = object
            .as_object()
            .ok_or_else(|| format!("expected an object, got {object}"))?;
        match keys.iter().find(|k| !map.contains_key(k.as_str())) {
            Some(missing) => Err(format!("no {missing:?} in {object}")),
            None => Ok(()),
        }
    };
    match shape {
        BodyShape::Members(expected) => contains(&value, expected)
            .then_some(())
            .ok_or_else(|| format!("expected {expected} in the answer, got {value}")),
        BodyShape::Keys(keys) => has_keys(&value, keys),
        BodyShape::EachKeys(keys) => {
            let items = value
                .as_array()
                .ok_or_else(|| format!("expected an array, got {value}"))?;
            if items.is_empty() {
                return Err("expected elements, got an empty array".into());
            }
            items.iter().try_for_each(|item| has_keys(item, keys))
        }
    }
}

/// `expected`'s members are in `value` with the same values (arrays: element by element).
fn contains(value: &Value, expected: &Value) -> bool {
    match (value, expected) {
        (Value::Object(v), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| v.get(k).is_some_and(|vv| contains(vv, ev))),
        (Value::Array(v), Value::Array(e)) => {
            v.len() >= e.len() && e.iter().zip(v).all(|(ev, vv)| contains(vv, ev))
        }
        _ => value == expected,
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text: String = text.chars().take(300).collect();
    text
}

// ---------------------------------------------------------------------------------------
// Running them

/// The bash the reader types into: one process for the whole run, so variables
/// (`TOKEN=$(…)`) carry from one command to the next.
struct Session {
    root: PathBuf,
    scratch: tempfile::TempDir,
    bash: Child,
    stdin: ChildStdin,
    output: Receiver<String>,
    marker: String,
    background: Vec<(String, u32)>,
    ran: usize,
    skipped: Vec<String>,
    pasted: Vec<(String, String)>,
}

/// Runs in the session before the reader's commands: `curl` records each answer's status
/// and body for the checks (and is quiet about progress), nothing else changes. Where the
/// machine has no `sudo` and we are root (CI), `sudo` is what it would be: nothing.
const PRELUDE: &str = r#"
exec 2>&1
curl() {
  local hdr body rc status
  hdr=$(mktemp -p "$README_TEST_DIR")
  body=$(mktemp -p "$README_TEST_DIR")
  command curl -sS -D "$hdr" "$@" | tee "$body"
  rc=${PIPESTATUS[0]}
  status=$(grep -a '^HTTP/' "$hdr" | tail -n 1 | cut -d' ' -f2)
  printf '%s\t%s\n' "${status:-000}" "$body" >> "$README_TEST_DIR/calls"
  cp "$body" "$README_TEST_DIR/last-answer"
  return "$rc"
}
if ! command -v sudo >/dev/null && [ "$(id -u)" = 0 ]; then sudo() { "$@"; }; fi
"#;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The first command builds the release binary: minutes on a small machine.
const READY_TIMEOUT: Duration = Duration::from_secs(40 * 60);

impl Session {
    fn start(root: &Path) -> Session {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let mut command = Command::new("bash");
        command
            .args(["--noprofile", "--norc"])
            .current_dir(root)
            .env("README_TEST_DIR", scratch.path())
            // A fresh user: no saved token of the developer's is read or overwritten.
            .env("XDG_CONFIG_HOME", scratch.path().join("config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // What `cargo test` sets for the test is not the reader's environment.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    key.as_str(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "RUST_LOG"
                )
            {
                command.env_remove(&key);
            }
        }
        let mut bash = command.spawn().expect("bash runs");
        let stdin = bash.stdin.take().expect("bash stdin");
        let stdout = bash.stdout.take().expect("bash stdout");
        let (sender, output) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if sender.send(text).is_err() {
                    return;
                }
                line.clear();
            }
        });
        let marker = format!("README-TEST-DONE-{}", std::process::id());
        let mut session = Session {
            root: root.to_owned(),
            scratch,
            bash,
            stdin,
            output,
            marker,
            background: Vec::new(),
            ran: 0,
            skipped: Vec::new(),
            pasted: Vec::new(),
        };
        let (status, out) = session.send(PRELUDE, Duration::from_secs(10));
        assert_eq!(status, "0", "the prelude failed: {out}");
        session
    }

    /// Sends a script and waits for the marker it prints with its exit status.
    fn send(&mut self, script: &str, timeout: Duration) -> (String, String) {
        let framed = format!("{script}\nprintf '\\n%s %s\\n' {} \"$?\"\n", self.marker);
        self.stdin
            .write_all(framed.as_bytes())
            .and_then(|()| self.stdin.flush())
            .expect("bash takes input");
        let deadline = Instant::now() + timeout;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(&self.marker) {
                        out.push_str(&line[..at]);
                        let status = line[at + self.marker.len()..].trim().to_owned();
                        return (status, out);
                    }
                    println!("  {line}");
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out after {timeout:?} running:\n{script}\noutput so far:\n{out}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("bash exited running:\n{script}\noutput:\n{out}")
                }
            }
        }
    }

    fn run_block(&mut self, document: &Document, block: &Block) {
        let at = |line: usize| format!("{}:{line}", document.name);
        if let Some(reason) = block.directives.iter().find_map(|d| match d {
            Directive::Skip(reason) => Some(reason),
            _ => None,
        }) {
            for (line, command) in &block.commands {
                self.skip(&at(*line), command, reason);
            }
            return;
        }
        for directive in &block.directives {
            match directive {
                Directive::Fixture { path, kind } => self.fixture(path, kind),
                Directive::Stop(prefix) => self.stop(prefix),
                Directive::Paste { name, shell } => {
                    let (status, out) = self.send(shell, COMMAND_TIMEOUT);
                    let value = out.trim().to_owned();
                    assert!(
                        status == "0" && !value.is_empty() && !value.contains('\n'),
                        "{}: paste {name}: {shell:?} found no single value (exit {status}): {out}",
                        at(block.line)
                    );
                    let (status, out) = self.send(&format!("{name}='{value}'"), COMMAND_TIMEOUT);
                    assert_eq!(status, "0", "setting {name}: {out}");
                    self.pasted.push((name.clone(), value));
                }
                _ => {}
            }
        }
        for (line, command) in &block.commands {
            self.run_command(&at(*line), command, &block.directives);
        }
        self.pasted.clear();
    }

    fn skip(&mut self, at: &str, command: &str, reason: &str) {
        println!("SKIPPED {at}: {command}  ({reason})");
        self.skipped.push(format!("{at} {command} ({reason})"));
    }

    fn run_command(&mut self, at: &str, command: &str, directives: &[Directive]) {
        let (line, comment) = split_comment(command);
        let matches = |prefix: &str| line.starts_with(prefix);
        for directive in directives {
            if let Directive::SkipCommand { prefix, reason } = directive
                && matches(prefix)
            {
                self.skip(at, &line, reason);
                return;
            }
        }
        let line = self.substitute(&line);
        self.ran += 1;
        println!("$ {line}    [{at}]");
        if let Some(until) = directives.iter().find_map(|d| match d {
            Directive::Background { prefix, until } if matches(prefix) => Some(until),
            _ => None,
        }) {
            self.background(at, &line, until);
            return;
        }
        let stdin = directives.iter().find_map(|d| match d {
            Directive::Stdin { prefix, text } if matches(prefix) => Some(text),
            _ => None,
        });
        let calls = self.scratch.path().join("calls");
        std::fs::write(&calls, "").expect("reset calls");
        let script = match stdin {
            Some(text) => format!("{{ {line}\n}} <<'README_TEST_STDIN'\n{text}\nREADME_TEST_STDIN"),
            None => format!("{{ {line}\n}} < /dev/null"),
        };
        let (status, out) = self.send(&script, COMMAND_TIMEOUT);
        let fail = |why: String| -> ! {
            panic!("{at}: `{line}` {why}\noutput:\n{out}");
        };
        if status != "0" {
            fail(format!("exited {status}"));
        }
        let expected = expected(comment.as_deref());
        let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
        let answers: Vec<(u16, PathBuf)> = recorded
            .lines()
            .filter_map(|l| {
                let (status, body) = l.split_once('\t')?;
                Some((status.parse().ok()?, PathBuf::from(body)))
            })
            .collect();
        if line.contains("curl ") && answers.is_empty() {
            fail("made no HTTP request".into());
        }
        for (status, body) in &answers {
            match expected.status {
                Some(want) if *status != want => {
                    fail(format!("answered {status}, the README says {want}"))
                }
                None if !(200..300).contains(status) => fail(format!("answered {status}")),
                _ => {}
            }
            if let Some(shape) = &expected.body {
                let bytes = std::fs::read(body).unwrap_or_default();
                if let Err(why) = check_body(shape, &bytes) {
                    fail(format!("answered otherwise than the README says: {why}"));
                }
            }
        }
    }

    /// `$NAME` is set in the shell; a bare NAME (a placeholder such as `MP3_FID`) is
    /// replaced where it stands as a word of its own.
    fn substitute(&self, line: &str) -> String {
        let mut line = line.to_owned();
        for (name, value) in &self.pasted {
            let mut out = String::new();
            let mut rest = line.as_str();
            while let Some(at) = rest.find(name.as_str()) {
                let before = rest[..at].chars().next_back();
                let after = rest[at + name.len()..].chars().next();
                let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                out.push_str(&rest[..at]);
                if before == Some('$') || word(before) || word(after) {
                    out.push_str(name);
                } else {
                    out.push_str(value);
                }
                rest = &rest[at + name.len()..];
            }
            out.push_str(rest);
            line = out;
        }
        line
    }

    fn background(&mut self, at: &str, line: &str, until: &str) {
        let log = self
            .scratch
            .path()
            .join(format!("background-{}.log", self.background.len()));
        let pid_file = self.scratch.path().join("background.pid");
        let (status, out) = self.send(
            &format!(
                "{line} > '{}' 2>&1 < /dev/null &\necho \"$!\" > '{}'",
                log.display(),
                pid_file.display()
            ),
            Duration::from_secs(10),
        );
        assert_eq!(status, "0", "{at}: could not start `{line}`: {out}");
        let out = std::fs::read_to_string(&pid_file).expect("background pid");
        let pid: u32 = out.trim().parse().expect("background pid");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(until) {
                println!(
                    "  (ready: {until:?} after {} lines of output)",
                    text.lines().count()
                );
                break;
            }
            let alive = Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| !stat.contains(") Z "));
            if !alive || Instant::now() > deadline {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{at}: `{line}` {} before printing {until:?}; its output ends:\n{}",
                    if alive { "timed out" } else { "exited" },
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.background.push((line.to_owned(), pid));
    }

    /// Ctrl-C: SIGTERM, and the command must exit 0 (a graceful stop) within 30 s.
    fn stop(&mut self, prefix: &str) {
        let Some(index) = self
            .background
            .iter()
            .position(|(l, _)| l.starts_with(prefix))
        else {
            panic!("stop {prefix:?}: no such background command is running");
        };
        let (line, pid) = self.background.remove(index);
        let (status, out) = self.send(
            &format!("kill -TERM {pid}; wait {pid}"),
            Duration::from_secs(30),
        );
        assert_eq!(status, "0", "`{line}` did not exit 0 on SIGTERM: {out}");
        println!("  (stopped `{line}`: exit 0)");
    }

    fn stop_all(&mut self) {
        while let Some((line, _)) = self.background.first().cloned() {
            self.stop(&line);
        }
    }

    fn fixture(&mut self, path: &str, kind: &str) {
        let target = self.root.join(path);
        match kind {
            "video" => {
                let status = Command::new("ffmpeg")
                    .args(["-nostdin", "-y", "-hide_banner", "-loglevel", "error"])
                    .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=3"])
                    .args([
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=size=160x120:rate=10:duration=3",
                    ])
                    .args(["-c:a", "aac", "-c:v", "mpeg4", "-shortest"])
                    .arg(&target)
                    .status()
                    .expect("ffmpeg runs (CI installs it)");
                assert!(status.success(), "ffmpeg could not make {path}");
            }
            _ => std::fs::write(&target, "these are notes, not a video\n").expect("write fixture"),
        }
    }

    fn summary(&self) -> String {
        format!(
            "README test: {} commands ran, {} skipped by name:\n  {}",
            self.ran,
            self.skipped.len(),
            self.skipped.join("\n  ")
        )
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, pid) in &self.background {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let _ = self.bash.kill();
        let _ = self.bash.wait();
    }
}

/// What the reader's commands left at the repository root (data, downloads, fixtures) is
/// removed afterwards, pass or fail; what was there before is left alone.
struct NewEntries {
    root: PathBuf,
    before: BTreeSet<std::ffi::OsString>,
}

impl NewEntries {
    fn remember(root: &Path) -> NewEntries {
        NewEntries {
            root: root.to_owned(),
            before: entries(root),
        }
    }
}

fn entries(root: &Path) -> BTreeSet<std::ffi::OsString> {
    std::fs::read_dir(root)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default()
}

impl Drop for NewEntries {
    fn drop(&mut self) {
        for name in entries(&self.root).difference(&self.before) {
            let path = self.root.join(name);
            if name == "target" {
                continue;
            }
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The reader's rules themselves

#[test]
fn a_trailing_comment_states_the_status_and_the_shape_of_the_answer() {
    let (line, comment) = split_comment(
        r#"curl -X POST localhost:8080/posts/create -d '{"title":"a # b"}'   # 201 {"id","title"}"#,
    );
    assert_eq!(
        line,
        r#"curl -X POST localhost:8080/posts/create -d '{"title":"a # b"}'"#
    );
    assert_eq!(
        expected(comment.as_deref()),
        Expected {
            status: Some(201),
            body: Some(BodyShape::Keys(vec!["id".into(), "title".into()])),
        }
    );
    let e = expected(Some(
        r#"the ordered event log ([{"seq","type","data"}], ?after=SEQ)"#,
    ));
    assert_eq!(e.status, None);
    assert_eq!(
        e.body,
        Some(BodyShape::EachKeys(vec![
            "seq".into(),
            "type".into(),
            "data".into()
        ]))
    );
    let e = expected(Some(r#"{"status":"OK"}, published on the bus"#));
    assert_eq!(
        e.body,
        Some(BodyShape::Members(serde_json::json!({"status": "OK"})))
    );
    assert_eq!(expected(Some("2024 was a year")).status, None);
    assert_eq!(expected(Some("the JWT, plain text")), Expected::default());
}

#[test]
fn answers_are_held_to_what_the_comment_says() {
    let keys = BodyShape::Keys(vec!["id".into(), "title".into()]);
    assert!(check_body(&keys, br#"{"id":"1","title":"t"}"#).is_ok());
    assert!(check_body(&keys, br#"{"id":"1"}"#).is_err());
    assert!(check_body(&keys, b"not json").is_err());
    let ok = BodyShape::Members(serde_json::json!({"status": "OK"}));
    assert!(check_body(&ok, br#"{"status":"OK","x":1}"#).is_ok());
    assert!(check_body(&ok, br#"{"status":"KO"}"#).is_err());
    let each = BodyShape::EachKeys(vec!["seq".into()]);
    assert!(check_body(&each, br#"[{"seq":1},{"seq":2}]"#).is_ok());
    assert!(check_body(&each, br#"[{"seq":1},{}]"#).is_err());
    assert!(check_body(&each, b"[]").is_err());
}

#[test]
fn documents_parse_into_blocks_directives_and_joined_commands() {
    let doc = Document::parse(
        "x.md",
        "text\n<!-- readme-test: stdin \"flotilla client login\" \"pw\"\nskip-command \"cargo test\" \"the suite\" -->\n```sh\n# a comment\ncurl a \\\n  -d b   # 201\ncargo test --workspace\n```\n",
    );
    assert_eq!(doc.blocks.len(), 1);
    let block = &doc.blocks[0];
    assert_eq!(block.directives.len(), 2);
    assert_eq!(
        block.commands,
        vec![
            (6, "curl a -d b   # 201".to_owned()),
            (8, "cargo test --workspace".to_owned())
        ]
    );
    assert!(parse_directive("frobnicate").is_err());
}
