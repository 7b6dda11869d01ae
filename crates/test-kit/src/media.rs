//! Media fixtures made on the fly with the real `ffmpeg` (lavfi sources), and what
//! `ffprobe` says of a file — for the converter's tests and the system's media tests.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// True when `ffmpeg` runs; otherwise the test is skipped — or fails under `CI=true`
/// (see [`crate::available`]).
pub fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|out| out.status.success());
    crate::available(found, "ffmpeg is not on PATH (apt-get install ffmpeg)")
}

/// Runs `ffmpeg -nostdin -y -hide_banner -loglevel error ARGS… DIR/NAME`; returns the
/// path.
pub fn make(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed making {name}");
    out
}

/// A small video, `DIR/video.mp4`: `secs` of a 440 Hz tone in AAC and a test pattern in
/// MPEG-4.
pub fn mp4_with_aac(dir: &Path, secs: u32) -> PathBuf {
    let d = secs.to_string();
    make(
        dir,
        "video.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:duration={d}"),
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc=size=160x120:rate=10:duration={d}"),
            "-c:a",
            "aac",
            "-c:v",
            "mpeg4",
            "-shortest",
        ],
    )
}

/// Duration in seconds of the first audio stream (or of the file) as ffprobe sees it.
pub fn audio_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args([
            "stream=duration:format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.trim().parse::<f64>().ok())
        .expect("ffprobe printed a duration")
}

/// The codec of the first audio stream (`mp3` for a real MP3).
pub fn audio_codec(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["stream=codec_name", "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A mono 16-bit PCM WAV of a 440 Hz tone lasting `seconds`: audio every converter path
/// takes (symphonia in-process, no ffmpeg needed).
pub fn wav(seconds: u32) -> Vec<u8> {
    let rate = 44_100u32;
    let samples = rate * seconds;
    let mut out = Vec::with_capacity(44 + samples as usize * 2);
    let data_len = samples * 2;
    out.extend(b"RIFF");
    out.extend((36 + data_len).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(rate.to_le_bytes());
    out.extend((rate * 2).to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data_len.to_le_bytes());
    for i in 0..samples {
        let t = f64::from(i) / f64::from(rate);
        let value = (t * 440.0 * std::f64::consts::TAU).sin() * 8000.0;
        out.extend((value as i16).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_video_has_the_asked_for_audio() {
        if !have_ffmpeg() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let video = mp4_with_aac(dir.path(), 2);
        assert_eq!(audio_codec(&video), "aac");
        let secs = audio_duration(&video);
        assert!((1.9..2.2).contains(&secs), "{secs}");
    }
}
