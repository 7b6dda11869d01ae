//! The fallback engine: the `ffmpeg` command, for inputs symphonia cannot read (AVI,
//! Opus, HE-AAC, multichannel AAC …). Run without a shell, with the arguments as a list,
//! its error output kept (bounded) and summarised, and killed on timeout or shutdown.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::error::ConvertError;

/// Lines of ffmpeg's error output kept for the summary (the last ones matter).
const STDERR_LINES_KEPT: usize = 20;
/// A single line longer than this is cut (ffmpeg can print very long ones).
const STDERR_LINE_MAX: usize = 400;
/// Length of the reason a job carries.
const SUMMARY_MAX: usize = 300;

/// Looks `ffmpeg` up in `PATH`, as a shell would.
pub fn find_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ffmpeg"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// The demuxers the fallback may use: containers and raw streams of audio and video,
/// each of which reads only the one file it is given. Left out on purpose are the ones
/// that open other files or URLs named inside the upload — `concat`/`ffconcat`, `hls`
/// and other playlists (`dash`, `m3u`…), `image2` file patterns — and text formats
/// (subtitles, `tty`) that no upload needs. ffmpeg otherwise guesses the format, so an
/// uploaded ffconcat script or HLS playlist made it convert another user's upload or any
/// media file the server can read (issue 14). (`mov`'s external data references stay
/// off: `enable_drefs` defaults to 0.)
const DEMUXERS: &str = "mov,matroska,avi,ogg,mp3,aac,flac,wav,w64,aiff,caf,asf,flv,\
mpegts,mpeg,ac3,eac3,dts,dtshd,truehd,mlp,amr,ape,wv,tta,mpc,mpc8,au,rm,nut,loas";

/// `ffmpeg -i input -vn -codec:a libmp3lame -q:a 2 output`, plus: no stdin, only
/// errors on stderr, overwrite the output, MP3 whatever the output's name. `file:`
/// stops ffmpeg from reading a path as a protocol URL or an option. The input may only
/// be read by the demuxers of [`DEMUXERS`], through the `file` protocol alone (no
/// http, pipe, data, concat… URLs, nested or not).
fn arguments(input: &Path, output: &Path) -> Vec<OsString> {
    let file_url = |path: &Path| {
        let mut url = OsString::from("file:");
        url.push(path.as_os_str());
        url
    };
    let mut args: Vec<OsString> = [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-format_whitelist",
        DEMUXERS,
        "-protocol_whitelist",
        "file",
        "-i",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(file_url(input));
    args.extend(
        [
            "-vn",
            "-sn",
            "-dn",
            "-codec:a",
            "libmp3lame",
            "-q:a",
            "2",
            "-f",
            "mp3",
        ]
        .iter()
        .map(OsString::from),
    );
    args.push(file_url(output));
    args
}

/// Runs ffmpeg to convert `input` into `output`.
pub async fn convert(
    ffmpeg: &Path,
    input: &Path,
    output: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let mut child = Command::new(ffmpeg)
        .args(arguments(input, output))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Belt and braces: if this future is dropped, the process goes with it.
        .kill_on_drop(true)
        .spawn()?;

    let stderr = child.stderr.take();
    let collect_stderr = async move {
        let mut kept = VecDeque::with_capacity(STDERR_LINES_KEPT);
        let Some(stderr) = stderr else {
            return kept;
        };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(mut line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            truncate_at_char(&mut line, STDERR_LINE_MAX);
            if kept.len() == STDERR_LINES_KEPT {
                kept.pop_front();
            }
            kept.push_back(line);
        }
        kept
    };

    let run = async {
        let (status, lines) = tokio::join!(child.wait(), collect_stderr);
        (status, lines)
    };
    let (status, lines) = tokio::select! {
        finished = run => finished,
        () = tokio::time::sleep(timeout) => {
            stop(&mut child).await;
            return Err(ConvertError::Timeout(timeout));
        }
        () = cancel.cancelled() => {
            stop(&mut child).await;
            return Err(ConvertError::Cancelled);
        }
    };
    let status = status?;
    if status.success() {
        return Ok(());
    }
    if status.code().is_none() {
        // Killed by a signal (the OOM killer, an operator): not the input's fault.
        return Err(ConvertError::Worker(format!(
            "ffmpeg was killed ({status})"
        )));
    }
    let lines: Vec<String> = lines
        .into_iter()
        .map(|line| hide_paths(&line, input, output))
        .collect();
    Err(classify(&lines))
}

async fn stop(child: &mut tokio::process::Child) {
    if let Err(err) = child.kill().await {
        tracing::warn!(error = %err, "could not kill ffmpeg");
    }
}

/// Server paths are no business of the user reading the reason.
fn hide_paths(line: &str, input: &Path, output: &Path) -> String {
    let mut line = line.to_owned();
    for (path, name) in [(output, "output"), (input, "input")] {
        let path = path.to_string_lossy();
        line = line.replace(&format!("file:{path}"), name);
        line = line.replace(path.as_ref(), name);
    }
    line
}

/// Turns ffmpeg's last error lines into the reason a user sees.
fn classify(lines: &[String]) -> ConvertError {
    let all = lines.join("\n");
    let has = |needle: &str| all.contains(needle);
    // A format outside the allow-list (a playlist, a concat script, an image): to the
    // user, not media. Checked first: what follows is ffmpeg failing on it.
    if has("not on whitelist") {
        return ConvertError::NotMedia;
    }
    if has("does not contain any stream") || has("matches no streams") {
        return ConvertError::NoAudioTrack;
    }
    // Not "moov atom not found": ffmpeg says that of any non-MP4 named `.mp4`, and a
    // real MP4 that lost its index is caught in-process, where the container is known.
    if has("Truncating packet")
        || has("End of file")
        || has("truncated")
        || has("Error while decoding")
        || has("corrupt")
    {
        return ConvertError::Corrupt(summary(lines));
    }
    if has("Invalid data found when processing input") {
        return ConvertError::NotMedia;
    }
    if (has("Decoder (codec") && has("not found")) || has("Unsupported codec") {
        return ConvertError::UnsupportedCodec(summary(lines));
    }
    ConvertError::Ffmpeg(summary(lines))
}

/// The last few distinct lines, joined and capped.
fn summary(lines: &[String]) -> String {
    let mut picked: Vec<&str> = Vec::new();
    for line in lines.iter().rev() {
        let line = line.trim();
        if !picked.contains(&line) {
            picked.push(line);
        }
        if picked.len() == 3 {
            break;
        }
    }
    picked.reverse();
    let mut text = picked.join("; ");
    if text.is_empty() {
        text = "ffmpeg failed without saying why".to_owned();
    }
    truncate_at_char(&mut text, SUMMARY_MAX);
    text
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn classifies_the_errors_ffmpeg_prints_for_unusable_input() {
        assert!(matches!(
            classify(&lines("Output file #0 does not contain any stream")),
            ConvertError::NoAudioTrack
        ));
        assert!(matches!(
            classify(&lines("input: Invalid data found when processing input")),
            ConvertError::NotMedia
        ));
        assert!(matches!(
            classify(&lines(
                "[hls @ 0x1] Format not on whitelist 'mov,matroska'\ninput: Invalid argument"
            )),
            ConvertError::NotMedia
        ));
        let renamed_text = classify(&lines(
            "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x1] moov atom not found\ninput: Invalid data found when processing input",
        ));
        assert!(
            matches!(renamed_text, ConvertError::NotMedia),
            "{renamed_text}"
        );
        let damaged = classify(&lines("[aac @ 0x1] Error while decoding stream #0:0"));
        assert!(matches!(damaged, ConvertError::Corrupt(_)), "{damaged}");
        let other = classify(&lines("something new\nand odd"));
        assert_eq!(
            other.to_string(),
            "conversion failed: something new; and odd"
        );
        assert!(other.is_permanent());
    }

    #[test]
    fn summaries_hide_server_paths_and_stay_short() {
        let input = Path::new("/var/lib/flotilla/tmp/abc.mp4");
        let output = Path::new("/var/lib/flotilla/tmp/abc.mp3");
        let line = hide_paths(
            "file:/var/lib/flotilla/tmp/abc.mp4: Invalid data found when processing input",
            input,
            output,
        );
        assert_eq!(line, "input: Invalid data found when processing input");
        let long = vec!["é".repeat(1000)];
        let text = summary(&long);
        assert!(text.len() <= SUMMARY_MAX + '…'.len_utf8());
    }

    #[test]
    fn arguments_are_a_list_with_file_urls() {
        let args = arguments(Path::new("-odd name.mp4"), Path::new("/tmp/out"));
        assert!(args.contains(&OsString::from("file:-odd name.mp4")));
        assert_eq!(args.last(), Some(&OsString::from("file:/tmp/out")));
        assert!(args.windows(2).any(|w| w[0] == "-q:a" && w[1] == "2"));
        // The allow-lists are input options: they come before `-i`.
        let position = |name: &str| args.iter().position(|a| a == name).expect(name);
        assert!(position("-format_whitelist") < position("-i"));
        assert!(position("-protocol_whitelist") < position("-i"));
        assert!(
            !DEMUXERS
                .split(',')
                .any(|d| ["concat", "hls", "image2"].contains(&d))
        );
    }
}
