//! Configuration: every setting is a `FLOTILLA_*` environment variable that a command-line
//! flag of the same meaning overrides (clap `env`). Values are parsed into types at the
//! edge, so a bad value stops the process at start with one line naming the variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Where a service listens and keeps its files.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (HOST:PORT; port 0 picks a free port).
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen_addr)]
    pub listen: SocketAddr,

    /// Directory for databases, blobs, keys and mail written to files.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "./flotilla-data")]
    pub data_dir: PathBuf,

    /// Threads that serve HTTP, each an event loop of its own that keeps a connection,
    /// its requests and the upstream calls they make on one thread. Unset: one per CPU
    /// for `serve gateway` (a proxy's work is nearly all connection handling), none for
    /// other services and `up` (0: share the main runtime).
    #[arg(long, env = "FLOTILLA_HTTP_THREADS")]
    pub http_threads: Option<usize>,

    /// Open connections one client address may hold; more are closed at accept. Unset:
    /// 256 for `up` and `serve gateway`, none of its own for other services (their
    /// clients are the gateway and each other). Behind a proxy that connects from one
    /// address, set it to what the proxy may open.
    #[arg(long, env = "FLOTILLA_HTTP_MAX_CONNECTIONS_PER_CLIENT")]
    pub http_max_connections_per_client: Option<usize>,

    /// Idle-read timeout and minimum rate of request bodies: each such span the server
    /// waits for a body must bring at least 1 KiB of it, or the request fails (408).
    #[arg(long, env = "FLOTILLA_HTTP_BODY_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub http_body_timeout: std::time::Duration,

    /// Linux scheduling policy of the process's threads: `other` is the kernel's default;
    /// `batch` (SCHED_BATCH) lets a thread that wakes wait for the running one instead of
    /// preempting it — less switching under load, later answers.
    #[arg(long, env = "FLOTILLA_SCHED_POLICY", value_enum, default_value_t = crate::sched::Policy::Other)]
    pub sched_policy: crate::sched::Policy,
}

/// `HOST:PORT`, where HOST may be a name (`localhost:8080`) or an IP address.
pub fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = "expected HOST:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080";
    if !value.contains(':') {
        return Err(hint.to_owned());
    }
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| hint.to_owned())
}

/// The leading whole number of `value` and the unit after it (`64MiB` → 64, `MiB`);
/// without a number, an error that says `expected` what.
fn number_and_unit<'a>(value: &'a str, expected: &str) -> Result<(u64, &'a str), String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number = digits.parse().map_err(|_| format!("expected {expected}"))?;
    Ok((number, unit))
}

/// A size in bytes, with an optional binary suffix: `1048576`, `512KiB`, `64MiB`, `2GiB`.
pub fn parse_byte_size(value: &str) -> Result<u64, String> {
    let (number, unit) = number_and_unit(value, "a size such as 1048576, 64MiB or 2GiB")?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" | "k" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}' (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .filter(|&n| n > 0)
        .ok_or_else(|| "size must be greater than zero and fit in 64 bits".to_owned())
}

/// The settings `A` takes when no flag is given and no variable is set: what its
/// `#[arg(default_value = …)]` attributes say (an `Option` without one is `None`). A
/// service's `Default` for its `Args` is this ([`crate::default_from_flags`]), so each
/// default is written once, in the attribute `--help` shows.
///
/// # Panics
/// If an argument of `A` has no default and is not optional: a mistake in `A` that any
/// test calling `A::default()` shows.
pub fn defaults<A: clap::Args + clap::FromArgMatches>() -> A {
    // The variables are ignored: a default does not depend on the environment.
    let command = A::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every argument has a default");
    A::from_arg_matches(&matches).expect("the defaults are valid values")
}

/// `impl Default for $args` with [`defaults`]: the flags' own defaults.
#[macro_export]
macro_rules! default_from_flags {
    ($args:ty) => {
        impl ::std::default::Default for $args {
            fn default() -> Self {
                $crate::config::defaults()
            }
        }
    };
}

/// A duration: `30s`, `500ms`, `5m`, `24h`, or plain seconds.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = number_and_unit(value, "a duration such as 30s, 500ms, 5m or 24h")?;
    let seconds = |n: u64| std::time::Duration::from_secs(n);
    let duration = match unit {
        "" | "s" => seconds(number),
        "ms" => std::time::Duration::from_millis(number),
        "m" => seconds(number.saturating_mul(60)),
        "h" => seconds(number.saturating_mul(3600)),
        "d" => seconds(number.saturating_mul(86_400)),
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m, h or d)"
            ));
        }
    };
    if duration.is_zero() {
        return Err("duration must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// Turns a clap value error into one line that names both the environment variable and
/// the flag, e.g. `invalid FLOTILLA_LISTEN (--listen) value 'nonsense': expected HOST:PORT …`.
/// Returns `None` for errors that are not about a bad value (help, usage …).
pub fn explain_clap_error(command: &clap::Command, error: &clap::Error) -> Option<String> {
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let arg_text = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(text)) => text.clone(),
        _ => return None,
    };
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let flag = arg_text
        .split_whitespace()
        .next()
        .unwrap_or(&arg_text)
        .to_owned();
    let env = find_env(command, &flag);
    let reason = std::error::Error::source(error)
        .map(ToString::to_string)
        .or_else(|| match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => {
                Some(format!("expected one of {}", valid.join(", ")))
            }
            _ => None,
        })
        .unwrap_or_else(|| "not a valid value".to_owned());
    let name = match env {
        Some(env) => format!("{env} ({flag})"),
        None => flag,
    };
    Some(format!("invalid {name} value '{value}': {reason}"))
}

fn find_env(command: &clap::Command, flag: &str) -> Option<String> {
    let long = flag.strip_prefix("--")?;
    for arg in command.get_arguments() {
        if arg.get_long() == Some(long) {
            return arg.get_env().map(|e| e.to_string_lossy().into_owned());
        }
    }
    command
        .get_subcommands()
        .find_map(|sub| find_env(sub, flag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, PartialEq, clap::Args)]
    struct WithDefaults {
        #[arg(long, env = "PATH", default_value = "90s", value_parser = parse_duration)]
        wait: std::time::Duration,
        #[arg(long, env = "PATH", default_value = "a,b", value_delimiter = ',')]
        words: Vec<String>,
        #[arg(long, env = "PATH")]
        url: Option<String>,
    }

    crate::default_from_flags!(WithDefaults);

    /// The defaults are the attributes' values, whatever the variables say (`PATH` is set).
    #[test]
    fn defaults_are_the_stated_ones_not_the_environment() {
        assert!(std::env::var_os("PATH").is_some());
        assert_eq!(
            WithDefaults::default(),
            WithDefaults {
                wait: std::time::Duration::from_secs(90),
                words: vec!["a".to_owned(), "b".to_owned()],
                url: None,
            }
        );
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, env = "FLOTILLA_TEST_ONLY_SIZE", default_value = "1MiB", value_parser = parse_byte_size)]
        size: u64,
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("0.0.0.0:8080"),
            Ok("0.0.0.0:8080".parse().expect("literal"))
        );
        for good in ["[::1]:0", "localhost:0"] {
            assert!(parse_listen_addr(good).is_ok(), "{good}");
        }
        for bad in ["nonsense", "127.0.0.1:99999"] {
            assert!(parse_listen_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes() {
        for (text, bytes) in [("1048576", 1 << 20), ("64MiB", 64 << 20), ("2GiB", 2 << 30)] {
            assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
        }
        for bad in ["0", "12 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30s"),
            Ok(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("24h"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_are_parsed_and_defaults_apply() {
        let cli =
            Cli::try_parse_from(["x", "--listen", "127.0.0.1:0", "--size", "2KiB"]).expect("valid");
        assert_eq!(cli.server.listen.port(), 0);
        assert_eq!(cli.size, 2048);
        assert_eq!(cli.server.data_dir, PathBuf::from("./flotilla-data"));
    }

    #[test]
    fn a_bad_value_is_explained_in_one_line_naming_the_variable() {
        let error = Cli::try_parse_from(["x", "--listen", "nonsense"]).expect_err("invalid");
        let line = explain_clap_error(&Cli::command(), &error).expect("a value error");
        assert!(line.contains("FLOTILLA_LISTEN"), "{line}");
        assert!(line.contains("--listen"), "{line}");
        assert!(line.contains("'nonsense'"), "{line}");
        assert!(line.contains("HOST:PORT"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn usage_errors_are_left_to_clap() {
        let error = Cli::try_parse_from(["x", "--no-such-flag"]).expect_err("invalid");
        assert!(explain_clap_error(&Cli::command(), &error).is_none());
    }
}
