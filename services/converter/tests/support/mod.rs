//! Fixtures made on the fly with the real `ffmpeg` (lavfi sources), and an independent
//! check of the MP3s produced: a full decode with symphonia, and ffprobe's view of the
//! duration (which is what players show, from the LAME/Xing tag).
#![allow(dead_code)]

pub use test_kit::media::make;

use std::path::{Path, PathBuf};
use std::process::Command;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::errors::Error;

/// ffmpeg from PATH. Locally a missing ffmpeg skips the test (returns `None`); under
/// `CI=true` it is a failure, because CI must exercise the real thing.
pub fn ffmpeg() -> Option<PathBuf> {
    let found = converter::find_ffmpeg();
    test_kit::available(
        found.is_some(),
        "ffmpeg is not on PATH (apt-get install ffmpeg)",
    )
    .then_some(found)?
}

/// Stereo test tone (different pitch per side) of `secs` seconds at `rate` Hz.
pub fn stereo_tone(secs: u32, rate: u32) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("aevalsrc=0.5*sin(440*2*PI*t)|0.5*sin(660*2*PI*t):s={rate}:d={secs}"),
    ]
}

/// 5.1 test tone: a different pitch on every channel.
pub fn surround_tone(secs: u32) -> Vec<String> {
    let exprs: Vec<String> = (0..6)
        .map(|i| format!("0.3*sin({}*2*PI*t)", 300 + 100 * i))
        .collect();
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("aevalsrc={}:c=5.1:s=48000:d={secs}", exprs.join("|")),
    ]
}

pub fn args<'a>(source: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    source
        .iter()
        .map(String::as_str)
        .chain(rest.iter().copied())
        .collect()
}

/// What a full, independent decode of an MP3 shows.
#[derive(Debug)]
pub struct Decoded {
    pub duration_secs: f64,
    pub sample_rate: u32,
    pub channels: usize,
    /// Largest absolute sample value: proves the audio is not silence.
    pub peak: f32,
}

/// Decodes every frame of the MP3 at `path` (gapless: the LAME tag's delay and padding
/// are removed, as a player would), panicking if any frame is unreadable.
pub fn decode_mp3(path: &Path) -> Decoded {
    let file = std::fs::File::open(path).expect("open mp3");
    let mut format = converter::open_mp3(Box::new(file)).expect("the output is an MP3");
    let track = format.default_track().expect("an audio track").clone();
    assert_eq!(
        track.codec_params.codec,
        symphonia::core::codecs::CODEC_TYPE_MP3
    );
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .expect("mp3 decoder");
    let mut frames = 0u64;
    let mut peak = 0f32;
    let mut channels = 0;
    let mut sample_rate = 0;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading the MP3 failed: {e}"),
        };
        let decoded = decoder.decode(&packet).expect("every MP3 frame decodes");
        let spec = *decoded.spec();
        channels = spec.channels.count();
        sample_rate = spec.rate;
        frames += decoded.frames() as u64;
        let mut samples = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        samples.copy_interleaved_ref(decoded);
        peak = samples.samples().iter().fold(peak, |p, s| p.max(s.abs()));
    }
    Decoded {
        duration_secs: frames as f64 / f64::from(sample_rate.max(1)),
        sample_rate,
        channels,
        peak,
    }
}

/// The duration ffprobe reports for a file (for an MP3: from its Xing/LAME tag).
pub fn ffprobe_duration(path: &Path) -> f64 {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe failed on {}",
        path.display()
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("ffprobe prints a duration")
}

/// The MP3's first frame is a Xing/Info header (VBR length and seek table) with a
/// LAME extension (delay and padding), written by `vendor` (`LAME` or ffmpeg's `Lavc`).
pub fn has_lame_tag(path: &Path, vendor: &[u8]) -> bool {
    let bytes = std::fs::read(path).expect("read mp3");
    let head = &bytes[..bytes.len().min(2048)];
    let find = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    (find(b"Xing") || find(b"Info")) && find(vendor)
}
