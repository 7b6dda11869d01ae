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

async fn convert_expecting_error(input: &Path, ffmpeg: Option<PathBuf>) -> ConvertError {
    let output = input.with_extension("out.mp3");
    let error = converter(ffmpeg)
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

#[tokio::test]
async fn aac_in_mp4_converts_in_process_with_the_source_duration() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(
        dir.path(),
        "in.mp4",
        &args(&tone, &["-c:a", "aac", "-b:a", "128k"]),
    );
    let report = convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
    assert_eq!(report.sample_rate, 44_100);
}

#[tokio::test]
async fn fragmented_mp4_converts_in_process() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(
        dir.path(),
        "fragmented.mp4",
        &args(
            &tone,
            &["-c:a", "aac", "-movflags", "frag_keyframe+empty_moov"],
        ),
    );
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn video_with_aac_audio_in_mov_converts_in_process() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 48_000);
    let mut source = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=10:duration=3",
    ];
    source.extend(args(&tone, &[]));
    source.extend(["-c:v", "mpeg4", "-c:a", "aac", "-shortest"]);
    let input = make(dir.path(), "in.mov", &source);
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn aac_in_mkv_converts_in_process() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(dir.path(), "in.mkv", &args(&tone, &["-c:a", "aac"]));
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn vorbis_in_webm_converts_in_process() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 48_000);
    let input = make(dir.path(), "in.webm", &args(&tone, &["-c:a", "libvorbis"]));
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn opus_in_webm_goes_to_the_ffmpeg_fallback() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 48_000);
    let input = make(dir.path(), "in.webm", &args(&tone, &["-c:a", "libopus"]));
    convert_and_check(dir.path(), &input, Engine::Ffmpeg, 2).await;
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
async fn pcm_wav_converts_in_process() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(dir.path(), "in.wav", &args(&tone, &["-c:a", "pcm_s16le"]));
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn a_96_khz_wav_is_resampled_by_lame_to_a_rate_mp3_carries() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 96_000);
    let input = make(
        dir.path(),
        "hires.wav",
        &args(&tone, &["-c:a", "pcm_s24le"]),
    );
    let report = convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
    assert_eq!(report.sample_rate, 48_000);
    assert_eq!(
        decode_mp3(&dir.path().join("hires.wav.mp3")).sample_rate,
        48_000
    );
}

#[tokio::test]
async fn mono_flac_stays_mono() {
    let dir = needs_ffmpeg!();
    let input = make(
        dir.path(),
        "in.flac",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=22050:duration=3",
        ],
    );
    let report = convert_and_check(dir.path(), &input, Engine::InProcess, 1).await;
    assert_eq!(report.sample_rate, 22_050);
}

#[tokio::test]
async fn mp3_input_is_reencoded_without_gaining_its_padding() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(dir.path(), "in.mp3", &args(&tone, &["-c:a", "libmp3lame"]));
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn five_one_flac_is_mixed_down_to_stereo_in_process() {
    let dir = needs_ffmpeg!();
    let tone = surround_tone(SECS);
    let input = make(dir.path(), "in.mka", &args(&tone, &["-c:a", "flac"]));
    convert_and_check(dir.path(), &input, Engine::InProcess, 2).await;
}

#[tokio::test]
async fn five_one_aac_goes_to_ffmpeg_and_comes_out_stereo() {
    let dir = needs_ffmpeg!();
    let tone = surround_tone(SECS);
    let input = make(dir.path(), "in.mp4", &args(&tone, &["-c:a", "aac"]));
    convert_and_check(dir.path(), &input, Engine::Ffmpeg, 2).await;
}

#[tokio::test]
async fn avi_goes_to_the_ffmpeg_fallback() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let mut source = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=10:duration=3",
    ];
    source.extend(args(&tone, &[]));
    source.extend(["-c:v", "mpeg4", "-c:a", "pcm_s16le", "-shortest"]);
    let input = make(dir.path(), "in.avi", &source);
    convert_and_check(dir.path(), &input, Engine::Ffmpeg, 2).await;
}

#[tokio::test]
async fn a_video_without_audio_fails_with_no_audio_track() {
    let dir = needs_ffmpeg!();
    let input = make(
        dir.path(),
        "silent.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=10:duration=2",
            "-c:v",
            "mpeg4",
        ],
    );
    for ffmpeg in [support::ffmpeg(), None] {
        let error = convert_expecting_error(&input, ffmpeg).await;
        assert!(matches!(error, ConvertError::NoAudioTrack), "{error:?}");
        assert_eq!(error.to_string(), "no audio track");
        assert!(error.is_permanent());
    }
}

#[tokio::test]
async fn a_text_file_named_mp4_is_not_a_media_file() {
    let dir = needs_ffmpeg!();
    let input = dir.path().join("notes.mp4");
    std::fs::write(&input, "These are my notes, not a video.\n".repeat(100)).expect("write");
    for ffmpeg in [support::ffmpeg(), None] {
        let error = convert_expecting_error(&input, ffmpeg).await;
        assert!(matches!(error, ConvertError::NotMedia), "{error:?}");
        assert_eq!(error.to_string(), "not a media file");
        assert!(error.is_permanent());
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
    for ffmpeg in [support::ffmpeg(), None] {
        let error = convert_expecting_error(&input, ffmpeg).await;
        assert!(matches!(error, ConvertError::Corrupt(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("corrupt or truncated media: "),
            "{error}"
        );
        assert!(error.is_permanent());
    }
}

#[tokio::test]
async fn a_truncated_mp4_that_lost_its_index_is_corrupt() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(10, 44_100);
    // ffmpeg writes the index (moov) last by default: half a file has none.
    let input = make(dir.path(), "cut.mp4", &args(&tone, &["-c:a", "aac"]));
    truncate_half(&input);
    for ffmpeg in [support::ffmpeg(), None] {
        let error = convert_expecting_error(&input, ffmpeg).await;
        assert!(matches!(error, ConvertError::Corrupt(_)), "{error:?}");
        assert!(error.is_permanent());
    }
}

#[tokio::test]
async fn shutdown_cancels_with_a_retryable_error() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(dir.path(), "in.mp4", &args(&tone, &["-c:a", "aac"]));
    let shutdown = CancellationToken::new();
    let converter = Converter::new(ConverterConfig::default(), shutdown.clone());
    shutdown.cancel();
    let output = dir.path().join("out.mp3");
    let error = converter
        .convert_file(&input, &output)
        .await
        .expect_err("cancelled");
    assert!(matches!(error, ConvertError::Cancelled), "{error:?}");
    assert!(!error.is_permanent());
    assert!(!output.exists());
}

#[tokio::test]
async fn a_conversion_past_its_deadline_is_stopped() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(dir.path(), "in.mp4", &args(&tone, &["-c:a", "aac"]));
    let converter = Converter::new(
        ConverterConfig {
            timeout: Duration::from_nanos(1),
            ..ConverterConfig::default()
        },
        CancellationToken::new(),
    );
    let output = dir.path().join("out.mp3");
    let error = converter
        .convert_file(&input, &output)
        .await
        .expect_err("too slow");
    assert!(matches!(error, ConvertError::Timeout(_)), "{error:?}");
    assert!(!error.is_permanent());
    assert!(!output.exists());
}

#[tokio::test]
async fn the_blocking_core_streams_from_any_reader_to_any_seekable_writer() {
    let dir = needs_ffmpeg!();
    let tone = stereo_tone(SECS, 44_100);
    let input = make(dir.path(), "in.mp4", &args(&tone, &["-c:a", "aac"]));
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
