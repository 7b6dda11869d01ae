//! The conversion engine against real files made by ffmpeg: every container and codec
//! the service promises, the ffmpeg fallback, and the inputs that must fail cleanly.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use converter::{ConversionReport, ConvertError, Converter, ConverterConfig, Engine};
use support::{args, decode_mp3, ffprobe_duration, has_lame_tag, make, stereo_tone, surround_tone};
use tokio_util::sync::CancellationToken;

const SECS: u32 = 3;
/// The contract: the MP3 lasts as long as the source audio, within 0.1 s.
const TOLERANCE: f64 = 0.1;

fn converter(ffmpeg: Option<PathBuf>) -> Converter {
    Converter::new(
        ConverterConfig {
            workers: 2,
            ffmpeg,
            timeout: Duration::from_secs(300),
        },
        CancellationToken::new(),
    )
}

/// Converts `input` and checks the MP3 three ways: the report, a full independent
/// decode, and ffprobe (what players show).
async fn convert_and_check(
    dir: &Path,
    input: &Path,
    engine: Engine,
    channels: u8,
) -> ConversionReport {
    let ffmpeg = support::ffmpeg();
    let output = dir.join(format!(
        "{}.mp3",
        input.file_name().and_then(|n| n.to_str()).expect("name")
    ));
    let report = converter(ffmpeg)
        .convert_file(input, &output)
        .await
        .unwrap_or_else(|e| panic!("{} should convert: {e}", input.display()));
    let expected = f64::from(SECS);
    assert_eq!(report.engine, engine, "{}", input.display());
    assert_eq!(report.channels, channels, "{}", input.display());
    assert!(
        (report.duration_secs - expected).abs() <= TOLERANCE,
        "{}: report says {} s",
        input.display(),
        report.duration_secs
    );
    assert_eq!(
        report.bytes_written,
        std::fs::metadata(&output).expect("mp3 exists").len()
    );

    let decoded = decode_mp3(&output);
    assert!(
        (decoded.duration_secs - expected).abs() <= TOLERANCE,
        "{}: decoded MP3 lasts {} s",
        input.display(),
        decoded.duration_secs
    );
    assert_eq!(decoded.channels, usize::from(channels));
    assert!(decoded.peak > 0.1, "{}: the MP3 is silent", input.display());
    let probed = ffprobe_duration(&output);
    assert!(
        (probed - expected).abs() <= TOLERANCE,
        "{}: ffprobe says {probed} s",
        input.display()
    );
    let vendor: &[u8] = match engine {
        Engine::InProcess => b"LAME",
        Engine::Ffmpeg => b"Lavc",
    };
    assert!(
        has_lame_tag(&output, vendor),
        "{}: no LAME tag",
        input.display()
    );
    eprintln!(
        "{}: report {:.4} s, decoded {:.4} s, ffprobe {probed:.4} s",
        input.display(),
        report.duration_secs,
        decoded.duration_secs
    );
    report
}

/// The errors converting `input` fails with, with ffmpeg and without: each permanent
/// (a retry cannot help).
async fn permanent_errors(input: &Path) -> Vec<ConvertError> {
    let mut errors = Vec::new();
    for ffmpeg in [support::ffmpeg(), None] {
        let error = convert_expecting_error(input, ffmpeg).await;
        assert!(error.is_permanent(), "{error:?}");
        errors.push(error);
    }
    errors
}

async fn convert_expecting_error(input: &Path, ffmpeg: Option<PathBuf>) -> ConvertError {
    failure_of(converter(ffmpeg), input).await
}

/// How `converter` fails to convert `input` (it leaves no MP3 behind).
async fn failure_of(converter: Converter, input: &Path) -> ConvertError {
    let output = input.with_extension("out.mp3");
    let error = converter
        .convert_file(input, &output)
        .await
        .expect_err("conversion should fail");
    assert!(!output.exists(), "a failed conversion leaves no MP3 behind");
    error
}

macro_rules! needs_ffmpeg {
    () => {{
        if support::ffmpeg().is_none() {
            return;
        }
        tempfile::tempdir().expect("temp dir")
    }};
}

/// `tone` encoded by ffmpeg with `codec` into `name` in a new directory, then converted
/// by `engine` to a stereo MP3 and checked (see [`convert_and_check`]); `None` without
/// ffmpeg.
async fn tone_converts(
    tone: Vec<String>,
    codec: &[&str],
    name: &str,
    engine: Engine,
) -> Option<(tempfile::TempDir, ConversionReport)> {
    support::ffmpeg()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = make(dir.path(), name, &args(&tone, codec));
    let report = convert_and_check(dir.path(), &input, engine, 2).await;
    Some((dir, report))
}

/// A 3 s test picture as the first input before `tone`'s: a video with that audio.
fn with_video(tone: Vec<String>) -> Vec<String> {
    let picture = lavfi("testsrc=size=160x120:rate=10:duration=3");
    picture.into_iter().map(str::to_owned).chain(tone).collect()
}

/// A `SECS`-second stereo tone in AAC in MP4, made in `dir`.
fn aac_in_mp4(dir: &Path) -> PathBuf {
    let tone = stereo_tone(SECS, 44_100);
    make(dir, "in.mp4", &args(&tone, &["-c:a", "aac"]))
}

/// ffmpeg's arguments for an input made by its lavfi filter `source`.
fn lavfi(source: &str) -> Vec<&str> {
    vec!["-f", "lavfi", "-i", source]
}

/// Tests that encode a tone with a codec into a file and check that the engine named
/// converts it to a stereo MP3 as long as the tone (see [`tone_converts`]).
/// `=> rate`: the MP3's sample rate too.
macro_rules! tone_converts {
    ($($test:ident: $file:literal, $tone:expr, $codec:expr, $engine:ident $(=> $rate:expr)?;)*) => {$(
        #[tokio::test]
        async fn $test() {
            let converted = tone_converts($tone, &$codec, $file, Engine::$engine).await;
            if let Some((_, _report)) = converted {
                $(assert_eq!(_report.sample_rate, $rate);)?
            }
        }
    )*};
}

tone_converts! {
    aac_in_mp4_converts_in_process_with_the_source_duration: "in.mp4", stereo_tone(SECS, 44_100), ["-c:a", "aac", "-b:a", "128k"], InProcess => 44_100;
    video_with_aac_audio_in_mov_converts_in_process: "in.mov", with_video(stereo_tone(SECS, 48_000)), ["-c:v", "mpeg4", "-c:a", "aac", "-shortest"], InProcess;
    avi_goes_to_the_ffmpeg_fallback: "in.avi", with_video(stereo_tone(SECS, 44_100)), ["-c:v", "mpeg4", "-c:a", "pcm_s16le", "-shortest"], Ffmpeg;
    fragmented_mp4_converts_in_process: "fragmented.mp4", stereo_tone(SECS, 44_100), ["-c:a", "aac", "-movflags", "frag_keyframe+empty_moov"], InProcess;
    aac_in_mkv_converts_in_process: "in.mkv", stereo_tone(SECS, 44_100), ["-c:a", "aac"], InProcess;
    vorbis_in_webm_converts_in_process: "in.webm", stereo_tone(SECS, 48_000), ["-c:a", "libvorbis"], InProcess;
    opus_in_webm_goes_to_the_ffmpeg_fallback: "in.webm", stereo_tone(SECS, 48_000), ["-c:a", "libopus"], Ffmpeg;
    pcm_wav_converts_in_process: "in.wav", stereo_tone(SECS, 44_100), ["-c:a", "pcm_s16le"], InProcess;
    mp3_input_is_reencoded_without_gaining_its_padding: "in.mp3", stereo_tone(SECS, 44_100), ["-c:a", "libmp3lame"], InProcess;
    five_one_flac_is_mixed_down_to_stereo_in_process: "in.mka", surround_tone(SECS), ["-c:a", "flac"], InProcess;
    five_one_aac_goes_to_ffmpeg_and_comes_out_stereo: "in.mp4", surround_tone(SECS), ["-c:a", "aac"], Ffmpeg;
}

#[tokio::test]
async fn opus_without_ffmpeg_is_a_permanent_unsupported_codec() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 48_000);
    let input = make(dir.path(), "in.webm", &args(&tone, &["-c:a", "libopus"]));
    let error = convert_expecting_error(&input, None).await;
    assert!(
        matches!(error, ConvertError::UnsupportedCodec(_)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("unsupported audio codec: opus"),
        "{error}"
    );
    assert!(error.is_permanent());
}

#[tokio::test]
async fn a_96_khz_wav_is_resampled_by_lame_to_a_rate_mp3_carries() {
    let Some((dir, report)) = tone_converts(
        stereo_tone(SECS, 96_000),
        &["-c:a", "pcm_s24le"],
        "hires.wav",
        Engine::InProcess,
    )
    .await
    else {
        return;
    };
    assert_eq!(report.sample_rate, 48_000);
    assert_eq!(
        decode_mp3(&dir.path().join("hires.wav.mp3")).sample_rate,
        48_000
    );
}

#[tokio::test]
async fn mono_flac_stays_mono() {
    let dir = needs_ffmpeg!();
    let mono = lavfi("sine=frequency=440:sample_rate=22050:duration=3");
    let input = make(dir.path(), "in.flac", &mono);
    let report = convert_and_check(dir.path(), &input, Engine::InProcess, 1).await;
    assert_eq!(report.sample_rate, 22_050);
}

#[tokio::test]
async fn a_video_without_audio_fails_with_no_audio_track() {
    let dir = needs_ffmpeg!();
    let mut picture_only = lavfi("testsrc=size=160x120:rate=10:duration=2");
    picture_only.extend(["-c:v", "mpeg4"]);
    let input = make(dir.path(), "silent.mp4", &picture_only);
    for error in permanent_errors(&input).await {
        assert!(matches!(error, ConvertError::NoAudioTrack), "{error:?}");
        assert_eq!(error.to_string(), "no audio track");
    }
}

#[tokio::test]
async fn a_text_file_named_mp4_is_not_a_media_file() {
    let dir = needs_ffmpeg!();
    let input = dir.path().join("notes.mp4");
    std::fs::write(&input, "These are my notes, not a video.\n".repeat(100)).expect("write");
    for error in permanent_errors(&input).await {
        assert!(matches!(error, ConvertError::NotMedia), "{error:?}");
        assert_eq!(error.to_string(), "not a media file");
    }
}

/// Keeps the first half of a file, as an interrupted upload would.
fn truncate_half(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    std::fs::write(path, &bytes[..bytes.len() / 2]).expect("write");
}

#[tokio::test]
async fn a_truncated_mp4_with_its_index_first_is_corrupt() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(10, 44_100);
    let input = make(
        dir.path(),
        "cut.mp4",
        &args(&tone, &["-c:a", "aac", "-movflags", "+faststart"]),
    );
    truncate_half(&input);
    for error in permanent_errors(&input).await {
        assert!(matches!(error, ConvertError::Corrupt(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("corrupt or truncated media: "),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_truncated_mp4_that_lost_its_index_is_corrupt() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(10, 44_100);
    // ffmpeg writes the index (moov) last by default: half a file has none.
    let input = make(dir.path(), "cut.mp4", &args(&tone, &["-c:a", "aac"]));
    truncate_half(&input);
    for error in permanent_errors(&input).await {
        assert!(matches!(error, ConvertError::Corrupt(_)), "{error:?}");
    }
}

#[tokio::test]
async fn shutdown_cancels_with_a_retryable_error() {
    let dir = needs_ffmpeg!();
    let input = aac_in_mp4(dir.path());
    let shutdown = CancellationToken::new();
    let converter = Converter::new(ConverterConfig::default(), shutdown.clone());
    shutdown.cancel();
    let error = failure_of(converter, &input).await;
    assert!(matches!(error, ConvertError::Cancelled), "{error:?}");
    assert!(!error.is_permanent());
}

#[tokio::test]
async fn a_conversion_past_its_deadline_is_stopped() {
    let dir = needs_ffmpeg!();
    let input = aac_in_mp4(dir.path());
    let converter = Converter::new(
        ConverterConfig {
            timeout: Duration::from_nanos(1),
            ..ConverterConfig::default()
        },
        CancellationToken::new(),
    );
    let error = failure_of(converter, &input).await;
    assert!(matches!(error, ConvertError::Timeout(_)), "{error:?}");
    assert!(!error.is_permanent());
}

#[tokio::test]
async fn the_blocking_core_streams_from_any_reader_to_any_seekable_writer() {
    let dir = needs_ffmpeg!();
    let input = aac_in_mp4(dir.path());
    let bytes = std::fs::read(&input).expect("read");
    let mut sink = std::io::Cursor::new(Vec::new());
    let report = converter::convert(
        std::io::Cursor::new(bytes),
        None,
        &mut sink,
        &CancellationToken::new(),
    )
    .expect("converts");
    assert_eq!(report.bytes_written, sink.get_ref().len() as u64);
    let output = dir.path().join("out.mp3");
    std::fs::write(&output, sink.into_inner()).expect("write");
    let decoded = decode_mp3(&output);
    assert!((decoded.duration_secs - f64::from(SECS)).abs() <= TOLERANCE);
}

/// An upload that is a script for one of ffmpeg's indirect demuxers: the fallback must
/// read the one uploaded file and nothing it names (issue 14, item 2).
async fn assert_not_media_with_and_without_ffmpeg(input: &Path) {
    for ffmpeg in [support::ffmpeg(), None] {
        let with = if ffmpeg.is_some() { "with" } else { "without" };
        let error = convert_expecting_error(input, ffmpeg).await;
        assert!(
            matches!(error, ConvertError::NotMedia),
            "{} {with} ffmpeg: {error:?}",
            input.display()
        );
        assert_eq!(error.to_string(), "not a media file");
        assert!(error.is_permanent());
    }
}

#[tokio::test]
async fn an_ffconcat_script_naming_another_upload_is_not_a_media_file() {
    let dir = needs_ffmpeg!();
    // Another user's upload beside this one, as blobs lie in one directory.
    let tone = stereo_tone(SECS, 44_100);
    make(
        dir.path(),
        "video-other",
        &args(&tone, &["-c:a", "aac", "-f", "mp4"]),
    );
    let input = dir.path().join("video-mine");
    std::fs::write(&input, "ffconcat version 1.0\nfile video-other\n").expect("write");
    assert_not_media_with_and_without_ffmpeg(&input).await;
}

#[tokio::test]
async fn an_hls_playlist_naming_an_absolute_path_is_not_a_media_file() {
    let dir = needs_ffmpeg!();
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let tone = stereo_tone(SECS, 44_100);
    let target = make(
        elsewhere.path(),
        "private.mp4",
        &args(&tone, &["-c:a", "aac"]),
    );
    let input = dir.path().join("video-playlist");
    let playlist = format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:{SECS},\n{}\n#EXT-X-ENDLIST\n",
        target.display()
    );
    std::fs::write(&input, playlist).expect("write");
    assert_not_media_with_and_without_ffmpeg(&input).await;
}

/// Deterministic noise (xorshift64*): the same bytes on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[tokio::test]
async fn random_bytes_are_not_a_media_file() {
    let dir = needs_ffmpeg!();
    for seed in 1..=8u64 {
        let input = dir.path().join(format!("video-noise-{seed}"));
        std::fs::write(&input, noise(seed, 64 * 1024 * seed as usize)).expect("write");
        assert_not_media_with_and_without_ffmpeg(&input).await;
    }
}
