//! What a finished conversion produced.

use std::io::{self, Read, Seek, SeekFrom};

use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::ConvertError;

/// Which engine made the MP3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// symphonia + LAME inside this process.
    InProcess,
    /// The `ffmpeg` command, for inputs the in-process decoder cannot read.
    Ffmpeg,
}

/// The outcome of a successful conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionReport {
    /// Length of the MP3's audio (encoder delay and padding excluded), in seconds.
    pub duration_secs: f64,
    /// Sample rate of the encoded audio, in Hz.
    pub sample_rate: u32,
    /// Channels in the MP3: 1 or 2 (more are mixed down to stereo).
    pub channels: u8,
    /// Size of the MP3 file.
    pub bytes_written: u64,
    pub engine: Engine,
}

/// What the headers of an MP3 say about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mp3Info {
    /// Playing time, encoder delay and padding excluded.
    pub duration_secs: f64,
    pub sample_rate: u32,
    pub channels: u8,
}

/// Opens an MP3 for reading gapless, as a player does: the LAME tag's encoder delay and
/// padding are left out of its packets.
pub fn open_mp3(source: Box<dyn MediaSource>) -> Result<Box<dyn FormatReader>, SymphoniaError> {
    let stream = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp3");
    let options = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe().format(
        &hint,
        stream,
        &options,
        &MetadataOptions::default(),
    )?;
    Ok(probed.format)
}

/// Reads an MP3's length, sample rate and channels without decoding it: the frame
/// headers give the rest, the LAME tag gives the delay and padding to leave out.
pub fn probe_mp3<R>(source: R) -> Result<Mp3Info, ConvertError>
where
    R: Read + Seek + Send + Sync + 'static,
{
    let mut format = open_mp3(Box::new(SeekableSource::new(source)?))
        .map_err(|err| ConvertError::Corrupt(format!("the MP3 written is unreadable: {err}")))?;
    let track = format
        .default_track()
        .ok_or_else(|| ConvertError::Corrupt("the MP3 written has no audio".to_owned()))?;
    let track_id = track.id;
    let sample_rate = track.codec_params.sample_rate.unwrap_or(0);
    let channels = track.codec_params.channels.map_or(0, |c| c.count());
    let mut frames: u64 = 0;
    loop {
        match format.next_packet() {
            Ok(packet) if packet.track_id() == track_id => frames += packet.dur(),
            Ok(_) => {}
            Err(SymphoniaError::IoError(err))
                if err.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break;
            }
            Err(err) => {
                return Err(ConvertError::Corrupt(format!(
                    "the MP3 written is unreadable: {err}"
                )));
            }
        }
    }
    if sample_rate == 0 || frames == 0 {
        return Err(ConvertError::Corrupt(
            "no audio could be decoded".to_owned(),
        ));
    }
    Ok(Mp3Info {
        duration_secs: frames as f64 / f64::from(sample_rate),
        sample_rate,
        channels: u8::try_from(channels).unwrap_or(2),
    })
}

/// Any `Read + Seek` source (a temp file from the blob store, a cursor in tests) as a
/// symphonia media source. The length is measured once, up front.
pub(crate) struct SeekableSource<R> {
    inner: R,
    len: Option<u64>,
}

impl<R: Read + Seek> SeekableSource<R> {
    pub(crate) fn new(mut inner: R) -> io::Result<Self> {
        let start = inner.stream_position()?;
        let end = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(start))?;
        Ok(Self {
            inner,
            len: Some(end),
        })
    }
}

impl<R: Read> Read for SeekableSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for SeekableSource<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<R: Read + Seek + Send + Sync> MediaSource for SeekableSource<R> {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        self.len
    }
}
