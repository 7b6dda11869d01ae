//! The in-process engine: symphonia demuxes and decodes, LAME encodes, one packet at a
//! time, so memory stays flat however long the input is.

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use mp3lame_encoder::{Builder, DualPcm, Encoder, FlushGap, MonoPcm, Quality};
use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Channels, Signal};
use symphonia::core::codecs::{CODEC_TYPE_AAC, CODEC_TYPE_NULL, CodecParameters, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::{MediaSourceStream, ReadBytes};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Instantiate;
use tokio_util::sync::CancellationToken;

use crate::error::ConvertError;
use crate::report::{ConversionReport, Engine, SeekableSource};

/// Frames of silence the AAC encoders we meet (ffmpeg, FDK, most phones) put before the
/// audio. MP4 marks them with an edit list that symphonia does not apply, so without
/// dropping them every MP3 would start 23 ms late and run 23 ms long.
const AAC_PRIMING_FRAMES: u64 = 1024;

/// Consecutive undecodable packets tolerated before the stream is declared corrupt: a
/// single bad packet is skipped (as players do), a damaged file is not.
const MAX_CONSECUTIVE_DECODE_ERRORS: u32 = 32;

/// If the container announces a length and the packets stop this much earlier, the file
/// was cut short (an interrupted upload, say) rather than merely rounded.
const TRUNCATION_SLACK_SECS: f64 = 0.5;

/// Converts `source` to MP3 into `sink`, in the calling (blocking) thread.
///
/// `extension` (e.g. `"mp4"`) is a hint for the container probe; content decides.
/// MP3 frames go to `sink` as LAME produces them; at the end the first frame is
/// rewritten with the LAME/Xing tag (length, seek table, encoder delay) so players show
/// the right duration, hence `Seek`. `cancel` is checked between packets.
pub fn convert<R, W>(
    source: R,
    extension: Option<&str>,
    sink: W,
    cancel: &CancellationToken,
) -> Result<ConversionReport, ConvertError>
where
    R: Read + Seek + Send + Sync + 'static,
    W: Write + Seek,
{
    let source = SeekableSource::new(source)?;
    let stream = MediaSourceStream::new(Box::new(source), Default::default());
    // symphonia 0.5's probe takes a hint but does not use it (content decides).
    let _ = extension;
    // symphonia's demuxers can panic on crafted input (the fuzzer found an arithmetic
    // overflow in its MKV reader): the same bytes panic again, so that is a permanent
    // failure of this input, not a crashed worker to retry. Nothing of the decoder
    // outlives the call, so no broken state is seen after the unwind.
    let converted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (format, at_start) = probe_format(stream)?;
        let mut decoded_any = false;
        match decode_all(format, sink, cancel, &mut decoded_any) {
            // symphonia searches the whole input for anything that looks like a container
            // or frame header, and random bytes contain some (an MP3 sync word, `OggS`…):
            // what fails before a single packet decodes, found anywhere but at the start,
            // was never media (issue 14). A damaged file starts with its container's mark.
            Err(ConvertError::Corrupt(_)) if !at_start && !decoded_any => {
                Err(ConvertError::NotMedia)
            }
            result => result,
        }
    }));
    converted.unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::warn!(%reason, "the in-process decoder panicked on this input");
        Err(ConvertError::DecoderFailed)
    })
}

/// Bytes a file's container mark may lie from where it is expected: MP4 puts a box
/// size before `ftyp`.
const MARKER_SLACK: u64 = 8;

/// symphonia's probe (`Probe::format`), one element at a time, noting whether the
/// container's mark was where a media file has it — at the start, or right after a
/// leading metadata tag (ID3) — rather than found by searching through other bytes.
fn probe_format(
    mut stream: MediaSourceStream,
) -> Result<(Box<dyn FormatReader>, bool), ConvertError> {
    let format_options = FormatOptions {
        // Lets the MP3 demuxer read the LAME tag of MP3 input and trim its padding.
        enable_gapless: true,
        ..Default::default()
    };
    let probe = symphonia::default::get_probe();
    let mut expected_at = 0u64;
    loop {
        let found = match probe.next(&mut stream) {
            Ok(found) => found,
            // The search reached the end (or its limit) without finding a mark.
            Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ConvertError::NotMedia);
            }
            Err(err) => return Err(probe_error(err)),
        };
        let at_start = stream.pos() <= expected_at + MARKER_SLACK;
        let damaged = |err| match probe_error(err) {
            ConvertError::Corrupt(_) if !at_start => ConvertError::NotMedia,
            other => other,
        };
        match found {
            Instantiate::Format(make) => {
                let format = make(stream, &format_options).map_err(damaged)?;
                return Ok((format, at_start));
            }
            Instantiate::Metadata(make) => {
                make(&MetadataOptions::default())
                    .read_all(&mut stream)
                    .map_err(damaged)?;
                expected_at = stream.pos();
            }
        }
    }
}

/// Decodes every packet of the first audio track of `format` and encodes it into `sink`;
/// `decoded_any` tells whether a single packet decoded.
fn decode_all<W: Write + Seek>(
    mut format: Box<dyn FormatReader>,
    sink: W,
    cancel: &CancellationToken,
    decoded_any: &mut bool,
) -> Result<ConversionReport, ConvertError> {
    let (track_id, params, mut decoder) = open_audio_track(format.tracks())?;
    let mut pipeline = Pipeline::new(&params, sink)?;

    let mut consecutive_errors = 0u32;
    let mut last_packet_end: u64 = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(ConvertError::Cancelled);
        }
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            // symphonia reports the regular end of the stream as an unexpected EOF too;
            // a cut-off file is told apart below by comparing with the announced length.
            Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                break;
            }
            // A chained stream (a second Ogg stream after the first): the upload's
            // audio is the first one.
            Err(SymphoniaError::ResetRequired) => break,
            Err(SymphoniaError::IoError(err)) => return Err(ConvertError::Io(err)),
            Err(err) => return Err(ConvertError::Corrupt(err.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        last_packet_end = packet.ts().saturating_add(packet.dur());
        match decoder.decode(&packet) {
            Ok(decoded) => {
                consecutive_errors = 0;
                *decoded_any = true;
                pipeline.push(decoded)?;
            }
            Err(SymphoniaError::DecodeError(reason)) => {
                consecutive_errors += 1;
                if consecutive_errors > MAX_CONSECUTIVE_DECODE_ERRORS {
                    return Err(ConvertError::Corrupt(reason.to_owned()));
                }
            }
            Err(SymphoniaError::IoError(err)) => {
                return Err(ConvertError::Corrupt(err.to_string()));
            }
            Err(SymphoniaError::Unsupported(feature)) => {
                return Err(ConvertError::UnsupportedCodec(format!(
                    "{} ({feature})",
                    codec_name(&params)
                )));
            }
            Err(err) => return Err(ConvertError::Corrupt(err.to_string())),
        }
    }
    check_not_truncated(&params, last_packet_end)?;
    pipeline.finish()
}

/// Maps a failed probe: no reader recognised the bytes → not media; a recognised
/// container that then failed to parse → damaged.
fn probe_error(err: SymphoniaError) -> ConvertError {
    match err {
        SymphoniaError::Unsupported(_) => ConvertError::NotMedia,
        SymphoniaError::IoError(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            ConvertError::Corrupt("the file ends before its header does".to_owned())
        }
        SymphoniaError::IoError(err) => ConvertError::Io(err),
        other => ConvertError::Corrupt(other.to_string()),
    }
}

type OpenTrack = (
    u32,
    CodecParameters,
    Box<dyn symphonia::core::codecs::Decoder>,
);

/// Picks the first audio track symphonia can decode.
fn open_audio_track(tracks: &[Track]) -> Result<OpenTrack, ConvertError> {
    let codecs = symphonia::default::get_codecs();
    let mut unsupported = None;
    for track in tracks {
        let params = &track.codec_params;
        // Video and subtitle tracks come through as NULL codecs without a sample rate.
        if params.codec == CODEC_TYPE_NULL && params.sample_rate.is_none() {
            continue;
        }
        match codecs.make(params, &DecoderOptions::default()) {
            Ok(decoder) => return Ok((track.id, params.clone(), decoder)),
            Err(SymphoniaError::Unsupported(feature)) => {
                unsupported.get_or_insert_with(|| {
                    if params.codec == CODEC_TYPE_NULL {
                        "unknown".to_owned()
                    } else {
                        format!("{} ({feature})", codec_name(params))
                    }
                });
            }
            Err(err) => return Err(ConvertError::Corrupt(err.to_string())),
        }
    }
    Err(unsupported.map_or(ConvertError::NoAudioTrack, ConvertError::UnsupportedCodec))
}

fn codec_name(params: &CodecParameters) -> String {
    use symphonia::core::codecs as c;
    if let Some(descriptor) = symphonia::default::get_codecs().get_codec(params.codec) {
        return descriptor.short_name.to_owned();
    }
    // Codecs symphonia knows by name but cannot decode.
    let name = match params.codec {
        c::CODEC_TYPE_OPUS => "opus",
        c::CODEC_TYPE_EAC3 => "ac3",
        c::CODEC_TYPE_DCA => "dts",
        c::CODEC_TYPE_WMA => "wma",
        c::CODEC_TYPE_SPEEX => "speex",
        c::CODEC_TYPE_ATRAC3 => "atrac3",
        c::CODEC_TYPE_MUSEPACK => "musepack",
        c::CODEC_TYPE_WAVPACK => "wavpack",
        c::CODEC_TYPE_TTA => "tta",
        c::CODEC_TYPE_MONKEYS_AUDIO => "ape",
        other => return other.to_string(),
    };
    name.to_owned()
}

/// Fails when the container announced a length (`n_frames`, in time-base units) and the
/// packets stopped well before it.
fn check_not_truncated(params: &CodecParameters, last_packet_end: u64) -> Result<(), ConvertError> {
    let (Some(n_frames), Some(time_base)) = (params.n_frames, params.time_base) else {
        return Ok(());
    };
    if n_frames == 0 {
        // Unknown length (fragmented MP4, live recordings), not an empty track.
        return Ok(());
    }
    let seconds = |ts: u64| {
        let time = time_base.calc_time(ts);
        time.seconds as f64 + time.frac
    };
    let expected = seconds(n_frames);
    let got = seconds(last_packet_end);
    if got + TRUNCATION_SLACK_SECS < expected {
        return Err(ConvertError::Corrupt(format!(
            "the file ends after {got:.1} s of {expected:.1} s"
        )));
    }
    Ok(())
}

/// Decoded audio → (priming trim, downmix) → LAME → sink.
struct Pipeline<W: Write + Seek> {
    encoder: Encoder,
    sink: BufWriter<W>,
    /// Where the MP3 starts in the sink: the LAME tag is written back there.
    start: u64,
    sample_rate: u32,
    /// What LAME chose, read from the first frame it wrote: it resamples rates MP3
    /// cannot carry (96 kHz, say).
    output_sample_rate: Option<u32>,
    output_channels: u8,
    /// Frames still to drop from the front (encoder priming).
    skip_frames: u64,
    /// Frames still wanted, when the container says exactly how many there are.
    remaining_frames: Option<u64>,
    frames_encoded: u64,
    bytes_written: u64,
    /// Reused between packets so that steady state allocates nothing.
    scratch: Option<AudioBuffer<f32>>,
    left: Vec<f32>,
    right: Vec<f32>,
    mp3: Vec<u8>,
}

impl<W: Write + Seek> Pipeline<W> {
    fn new(params: &CodecParameters, mut sink: W) -> Result<Self, ConvertError> {
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| ConvertError::Corrupt("the audio track has no sample rate".into()))?;
        if !SAMPLE_RATES.contains(&sample_rate) {
            return Err(ConvertError::UnsupportedSampleRate(sample_rate));
        }
        let input_channels = params.channels.map_or(2, Channels::count);
        let output_channels: u8 = if input_channels == 1 { 1 } else { 2 };
        let encoder = build_encoder(sample_rate, output_channels)?;
        let start = sink.stream_position()?;

        let priming = if params.codec == CODEC_TYPE_AAC && params.delay.is_none() {
            AAC_PRIMING_FRAMES
        } else {
            0
        };
        // MP4 stores the track length in the media time scale; when that scale is the
        // sample rate, it also tells how much of the last AAC frame is padding.
        // (Fragmented MP4 leaves that length at zero: then there is nothing to go by.)
        let remaining_frames = match (params.codec, params.n_frames, params.time_base) {
            (CODEC_TYPE_AAC, Some(n_frames), Some(time_base))
                if time_base.numer == 1 && time_base.denom == sample_rate && n_frames > priming =>
            {
                Some(n_frames.saturating_sub(priming))
            }
            _ => None,
        };
        Ok(Self {
            encoder,
            sink: BufWriter::with_capacity(64 * 1024, sink),
            start,
            sample_rate,
            output_sample_rate: None,
            output_channels,
            skip_frames: priming,
            remaining_frames,
            frames_encoded: 0,
            bytes_written: 0,
            scratch: None,
            left: Vec::new(),
            right: Vec::new(),
            mp3: Vec::new(),
        })
    }

    fn push(&mut self, decoded: AudioBufferRef<'_>) -> Result<(), ConvertError> {
        if decoded.spec().rate != self.sample_rate {
            return Err(ConvertError::Corrupt(
                "the sample rate changes in the middle of the stream".to_owned(),
            ));
        }
        // Decoders hand out f32 (AAC, Vorbis, MP3) or integers (PCM, FLAC, ALAC);
        // LAME takes f32 planes, so only the latter are converted, into a reused buffer.
        let scratch;
        let buffer: &AudioBuffer<f32> = match decoded {
            AudioBufferRef::F32(ref buffer) => buffer,
            other => {
                let needs_new = self
                    .scratch
                    .as_ref()
                    .is_none_or(|s| s.capacity() < other.frames() || s.spec() != other.spec());
                if needs_new {
                    self.scratch = Some(other.make_equivalent::<f32>());
                }
                scratch = self
                    .scratch
                    .as_mut()
                    .ok_or_else(|| ConvertError::Worker("scratch buffer missing".to_owned()))?;
                other.convert(scratch);
                scratch
            }
        };

        let frames = buffer.frames() as u64;
        let skip = self.skip_frames.min(frames);
        self.skip_frames -= skip;
        let mut end = frames;
        if let Some(remaining) = self.remaining_frames.as_mut() {
            end = end.min(skip + *remaining);
            *remaining -= end - skip;
        }
        let (from, to) = (skip as usize, end as usize);
        if from >= to {
            return Ok(());
        }
        let planes = buffer.planes();
        let planes = planes.planes();
        self.mp3.clear();
        self.mp3
            .reserve(mp3lame_encoder::max_required_buffer_size(to - from));
        // LAME takes full-scale samples in [-1, 1]; a corrupt stream can decode to values
        // far outside it (or NaN), and those fail an `assert` in LAME's quantiser, which
        // aborts the process. So every sample is clipped into range on the way in (what a
        // conversion to 16-bit integers would do anyway), into the reused plane buffers.
        match (self.output_channels, planes) {
            (1, [mono, ..]) => clip_into(&mut self.left, &mono[from..to]),
            // The container promised more channels than the decoder delivers.
            (_, [mono]) => {
                clip_into(&mut self.left, &mono[from..to]);
                clip_into(&mut self.right, &mono[from..to]);
            }
            (_, [left, right]) => {
                clip_into(&mut self.left, &left[from..to]);
                clip_into(&mut self.right, &right[from..to]);
            }
            (_, planes) => {
                downmix_to_stereo(
                    buffer.spec().channels,
                    planes,
                    from..to,
                    &mut self.left,
                    &mut self.right,
                );
                self.left
                    .iter_mut()
                    .for_each(|sample| *sample = clip(*sample));
                self.right
                    .iter_mut()
                    .for_each(|sample| *sample = clip(*sample));
            }
        }
        let written = if self.output_channels == 1 {
            self.encoder
                .encode_to_vec(MonoPcm(&self.left), &mut self.mp3)
        } else {
            self.encoder.encode_to_vec(
                DualPcm {
                    left: &self.left,
                    right: &self.right,
                },
                &mut self.mp3,
            )
        };
        written.map_err(|err| ConvertError::Encoder(err.to_string()))?;
        if self.output_sample_rate.is_none() {
            self.output_sample_rate = frame_sample_rate(&self.mp3);
        }
        self.sink.write_all(&self.mp3)?;
        self.bytes_written += self.mp3.len() as u64;
        self.frames_encoded += (to - from) as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<ConversionReport, ConvertError> {
        if self.frames_encoded == 0 {
            return Err(ConvertError::Corrupt(
                "no audio could be decoded".to_owned(),
            ));
        }
        self.mp3.clear();
        self.mp3
            .reserve(mp3lame_encoder::max_required_buffer_size(0));
        self.encoder
            .flush_to_vec::<FlushGap>(&mut self.mp3)
            .map_err(|err| ConvertError::Encoder(err.to_string()))?;
        self.sink.write_all(&self.mp3)?;
        self.bytes_written += self.mp3.len() as u64;

        // LAME reserved the first frame for this tag when encoding began; now that the
        // totals are known, write the real one over it.
        self.mp3.clear();
        self.mp3.reserve(self.encoder.lame_tag_size());
        if self.encoder.lame_tag_encode_to_vec(&mut self.mp3).is_some() {
            let end = self.sink.stream_position()?;
            self.sink.seek(SeekFrom::Start(self.start))?;
            self.sink.write_all(&self.mp3)?;
            self.sink.seek(SeekFrom::Start(end))?;
        }
        self.sink.flush()?;

        Ok(ConversionReport {
            duration_secs: self.frames_encoded as f64 / f64::from(self.sample_rate),
            sample_rate: self.output_sample_rate.unwrap_or(self.sample_rate),
            channels: self.output_channels,
            bytes_written: self.bytes_written,
            engine: Engine::InProcess,
        })
    }
}

/// The sample rate in the header of the MPEG audio frame at the start of `bytes`.
fn frame_sample_rate(bytes: &[u8]) -> Option<u32> {
    let [0xFF, b1, b2, ..] = *bytes else {
        return None;
    };
    if b1 & 0xE0 != 0xE0 {
        return None;
    }
    let base = match (b1 >> 3) & 0b11 {
        0b11 => [44_100, 48_000, 32_000], // MPEG-1
        0b10 => [22_050, 24_000, 16_000], // MPEG-2
        0b00 => [11_025, 12_000, 8_000],  // MPEG-2.5
        _ => return None,
    };
    base.get(usize::from((b2 >> 2) & 0b11)).copied()
}

/// LAME set up like `ffmpeg -codec:a libmp3lame -q:a 2`: VBR (mtrh) at quality 2, LAME
/// choosing the output sample rate (it resamples internally only when it must).
/// The input sample rates handed to LAME: from MP3's lowest (8 kHz) to 192 kHz. LAME
/// resamples anything, but on absurd rates (a WAV header saying 1 Hz, found by the
/// `media_probe` fuzz target) its psychoacoustic model fails an `assert`, and a C
/// assertion aborts the whole process.
const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;

fn build_encoder(sample_rate: u32, channels: u8) -> Result<Encoder, ConvertError> {
    let encoder_error = |err: mp3lame_encoder::BuildError| ConvertError::Encoder(err.to_string());
    let mut builder = Builder::new()
        .ok_or_else(|| ConvertError::Encoder("out of memory creating the encoder".into()))?;
    builder
        .set_sample_rate(sample_rate)
        .map_err(encoder_error)?;
    builder.set_num_channels(channels).map_err(encoder_error)?;
    builder
        .set_vbr_mode(mp3lame_encoder::VbrMode::Mtrh)
        .map_err(encoder_error)?;
    builder
        .set_vbr_quality(Quality::NearBest)
        .map_err(encoder_error)?;
    builder.set_to_write_vbr_tag(true).map_err(encoder_error)?;
    builder.build().map_err(encoder_error)
}

/// One sample clipped to LAME's full scale, [-1, 1]; NaN becomes silence.
fn clip(sample: f32) -> f32 {
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(-1.0, 1.0)
    }
}

/// `source` clipped (see [`clip`]) into `plane`, which is reused between packets.
fn clip_into(plane: &mut Vec<f32>, source: &[f32]) {
    plane.clear();
    plane.extend(source.iter().map(|&sample| clip(sample)));
}

/// Mixes any layout down to stereo, ITU-R BS.775 style: centre channels at −3 dB into
/// both sides, surrounds at −3 dB into their side, LFE dropped. The weights are scaled so
/// that a full-scale signal on every channel cannot clip (as ffmpeg's default does).
fn downmix_to_stereo(
    channels: Channels,
    planes: &[&[f32]],
    range: std::ops::Range<usize>,
    left: &mut Vec<f32>,
    right: &mut Vec<f32>,
) {
    let weights: Vec<(f32, f32)> = channels.iter().map(stereo_weights).collect();
    let (sum_left, sum_right) = weights
        .iter()
        .fold((0.0f32, 0.0f32), |(l, r), (wl, wr)| (l + wl, r + wr));
    let scale = 1.0 / sum_left.max(sum_right).max(1.0);

    left.clear();
    right.clear();
    left.resize(range.len(), 0.0);
    right.resize(range.len(), 0.0);
    for (plane, (wl, wr)) in planes.iter().zip(&weights) {
        let (wl, wr) = (wl * scale, wr * scale);
        if wl == 0.0 && wr == 0.0 {
            continue;
        }
        for ((l, r), sample) in left
            .iter_mut()
            .zip(right.iter_mut())
            .zip(&plane[range.clone()])
        {
            *l += sample * wl;
            *r += sample * wr;
        }
    }
}

fn stereo_weights(channel: Channels) -> (f32, f32) {
    const HALF_POWER: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let front_left = Channels::FRONT_LEFT;
    let front_right = Channels::FRONT_RIGHT;
    let lefts = Channels::REAR_LEFT
        | Channels::FRONT_LEFT_CENTRE
        | Channels::SIDE_LEFT
        | Channels::TOP_FRONT_LEFT
        | Channels::TOP_REAR_LEFT
        | Channels::REAR_LEFT_CENTRE
        | Channels::FRONT_LEFT_WIDE
        | Channels::FRONT_LEFT_HIGH;
    let rights = Channels::REAR_RIGHT
        | Channels::FRONT_RIGHT_CENTRE
        | Channels::SIDE_RIGHT
        | Channels::TOP_FRONT_RIGHT
        | Channels::TOP_REAR_RIGHT
        | Channels::REAR_RIGHT_CENTRE
        | Channels::FRONT_RIGHT_WIDE
        | Channels::FRONT_RIGHT_HIGH;
    let lfe = Channels::LFE1 | Channels::LFE2;
    if channel == front_left {
        (1.0, 0.0)
    } else if channel == front_right {
        (0.0, 1.0)
    } else if lefts.contains(channel) {
        (HALF_POWER, 0.0)
    } else if rights.contains(channel) {
        (0.0, HALF_POWER)
    } else if lfe.contains(channel) {
        (0.0, 0.0)
    } else {
        // Centres (front, rear, top).
        (HALF_POWER, HALF_POWER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_one_downmix_keeps_sides_apart_drops_lfe_and_cannot_clip() {
        let layout = Channels::FRONT_LEFT
            | Channels::FRONT_RIGHT
            | Channels::FRONT_CENTRE
            | Channels::LFE1
            | Channels::SIDE_LEFT
            | Channels::SIDE_RIGHT;
        let ones = [1.0f32; 4];
        let zeros = [0.0f32; 4];
        // Only the front left channel: appears on the left alone.
        let planes: [&[f32]; 6] = [&ones, &zeros, &zeros, &zeros, &zeros, &zeros];
        let (mut left, mut right) = (Vec::new(), Vec::new());
        downmix_to_stereo(layout, &planes, 1..3, &mut left, &mut right);
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|&s| s > 0.3), "{left:?}");
        assert!(right.iter().all(|&s| s == 0.0), "{right:?}");

        // Only LFE: silent.
        let planes: [&[f32]; 6] = [&zeros, &zeros, &zeros, &ones, &zeros, &zeros];
        downmix_to_stereo(layout, &planes, 0..4, &mut left, &mut right);
        assert!(left.iter().chain(&right).all(|&s| s == 0.0));

        // Everything at full scale: loud but not clipping.
        let planes: [&[f32]; 6] = [&ones; 6];
        downmix_to_stereo(layout, &planes, 0..4, &mut left, &mut right);
        assert!(
            left.iter().chain(&right).all(|&s| s > 0.9 && s <= 1.0),
            "{left:?}"
        );
    }
}

#[cfg(test)]
mod edge_tests {
    use std::io::Cursor;

    use super::*;

    fn convert_bytes(bytes: Vec<u8>) -> Result<ConversionReport, ConvertError> {
        let mut sink = Cursor::new(Vec::new());
        convert(
            Cursor::new(bytes),
            None,
            &mut sink,
            &CancellationToken::new(),
        )
    }

    /// A canonical 16-bit PCM WAV header for `frames` stereo frames at 44.1 kHz.
    fn wav_header(frames: u32) -> Vec<u8> {
        let data_len = frames * 4;
        let mut header = Vec::new();
        header.extend_from_slice(b"RIFF");
        header.extend_from_slice(&(36 + data_len).to_le_bytes());
        header.extend_from_slice(b"WAVEfmt ");
        header.extend_from_slice(&16u32.to_le_bytes());
        header.extend_from_slice(&1u16.to_le_bytes()); // PCM
        header.extend_from_slice(&2u16.to_le_bytes()); // channels
        header.extend_from_slice(&44_100u32.to_le_bytes());
        header.extend_from_slice(&(44_100u32 * 4).to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&16u16.to_le_bytes());
        header.extend_from_slice(b"data");
        header.extend_from_slice(&data_len.to_le_bytes());
        header
    }

    fn wav(frames: u32) -> Vec<u8> {
        let mut bytes = wav_header(frames);
        for i in 0..frames {
            let sample = ((f64::from(i) * 0.05).sin() * 10_000.0) as i16;
            for _ in 0..2 {
                bytes.extend_from_slice(&sample.to_le_bytes());
            }
        }
        bytes
    }

    #[test]
    fn an_empty_upload_is_not_a_media_file() {
        let error = convert_bytes(Vec::new()).expect_err("empty");
        assert!(matches!(error, ConvertError::NotMedia), "{error:?}");
    }

    #[test]
    fn a_generated_wav_converts_with_its_exact_length() {
        let report = convert_bytes(wav(44_100)).expect("converts");
        assert_eq!(report.engine, Engine::InProcess);
        assert_eq!(report.channels, 2);
        assert!((report.duration_secs - 1.0).abs() < 1e-9, "{report:?}");
        assert!(report.bytes_written > 1000);
    }

    #[test]
    fn a_wav_cut_in_half_is_truncated() {
        let mut bytes = wav(4 * 44_100);
        bytes.truncate(bytes.len() / 2);
        let error = convert_bytes(bytes).expect_err("truncated");
        assert!(
            matches!(error, ConvertError::Corrupt(ref reason) if reason.contains("ends after")),
            "{error:?}"
        );
    }

    #[test]
    fn a_header_without_samples_has_no_audio_to_convert() {
        let error = convert_bytes(wav_header(0)).expect_err("no samples");
        assert!(matches!(error, ConvertError::Corrupt(_)), "{error:?}");
    }

    /// Found by the `media_probe` fuzz target: an MKV header whose element size makes
    /// symphonia's EBML reader overflow (a panic with overflow checks on).
    #[test]
    fn a_decoder_panic_is_a_permanent_failure_of_the_input() {
        let input = include_bytes!("../../../fuzz/seeds/media_probe/crash-mkv-vint-overflow");
        let error = convert_bytes(input.to_vec()).expect_err("not convertible");
        assert!(matches!(error, ConvertError::DecoderFailed), "{error:?}");
        assert!(error.is_permanent());
        assert!(error.ffmpeg_may_help());
    }

    /// Found by the `media_probe` fuzz target: a corrupt AAC stream that decodes to samples
    /// far outside [-1, 1]. Handed to LAME as they were, they failed an `assert` in its
    /// quantiser (`vbrquantize.c`, `k_34_4`), and a C assertion aborts the whole process —
    /// every service of `flotilla up` with it, on every redelivery of the upload.
    #[test]
    fn samples_out_of_range_are_clipped_before_lame() {
        let input = include_bytes!("../../../fuzz/seeds/media_probe/crash-lame-ixmax-assert");
        // Converted or refused, but the process is still here to say so.
        let _ = convert_bytes(input.to_vec());
    }

    /// Found by the `media_probe` fuzz target: a WAV whose header says 1 Hz. LAME took it
    /// and then failed an `assert` in its psychoacoustic model (`psymodel.c`,
    /// `calc_energy`), aborting the process.
    #[test]
    fn a_sample_rate_lame_cannot_take_is_refused() {
        let input = include_bytes!("../../../fuzz/seeds/media_probe/crash-lame-sample-rate-1hz");
        let error = convert_bytes(input.to_vec()).expect_err("not convertible");
        assert!(
            matches!(error, ConvertError::UnsupportedSampleRate(1)),
            "{error:?}"
        );
        assert!(error.is_permanent());
        assert!(error.ffmpeg_may_help());
    }

    #[test]
    fn a_cancelled_token_stops_before_the_first_packet() {
        let token = CancellationToken::new();
        token.cancel();
        let mut sink = Cursor::new(Vec::new());
        let error = convert(Cursor::new(wav(44_100)), None, &mut sink, &token).expect_err("stop");
        assert!(matches!(error, ConvertError::Cancelled), "{error:?}");
    }
}
