//! Why a conversion failed, in words a user can read, and whether trying again can help.

use std::time::Duration;

/// A failed conversion. `Display` is the human-readable reason the job carries (for
/// example "no audio track"); [`ConvertError::is_permanent`] tells the caller whether a
/// retry can succeed, so unusable input is failed once instead of redelivered forever.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Nothing in the file looks like a container or stream we (or ffmpeg) know.
    #[error("not a media file")]
    NotMedia,
    /// A media file, but with no audio to convert (a silent video, say).
    #[error("no audio track")]
    NoAudioTrack,
    /// The container or stream is damaged or ends early.
    #[error("corrupt or truncated media: {0}")]
    Corrupt(String),
    /// The built-in decoder panicked on this input (a bug in a demuxer, found by
    /// fuzzing). The same bytes fail the same way again; ffmpeg may still read them.
    #[error("corrupt or unreadable media: the built-in decoder failed on it")]
    DecoderFailed,
    /// An audio track whose codec neither decoder can handle.
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    /// A sample rate outside what the built-in encoder takes (LAME fails an assertion,
    /// which aborts the process, on absurd ones such as 1 Hz). ffmpeg may resample it.
    #[error("unsupported sample rate: {0} Hz (the built-in encoder takes 8,000 to 192,000 Hz)")]
    UnsupportedSampleRate(u32),
    /// LAME refused the stream parameters or failed while encoding.
    #[error("mp3 encoder failed: {0}")]
    Encoder(String),
    /// ffmpeg ran and failed for a reason that fits none of the kinds above; the text is
    /// a short summary of its error output.
    #[error("conversion failed: {0}")]
    Ffmpeg(String),
    /// Reading the input or writing the output failed (disk full, file vanished …).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The conversion ran longer than the configured limit and was stopped.
    #[error("conversion took longer than {0:?} and was stopped")]
    Timeout(Duration),
    /// The service is shutting down; the job should be picked up again later.
    #[error("conversion cancelled by shutdown")]
    Cancelled,
    /// The worker thread died (a panic inside a decoder or the encoder).
    #[error("conversion worker failed: {0}")]
    Worker(String),
}

impl ConvertError {
    /// True when the same input will fail the same way again: the job should be marked
    /// failed with this reason and the message acknowledged, not retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::NotMedia
            | Self::NoAudioTrack
            | Self::Corrupt(_)
            | Self::UnsupportedCodec(_)
            | Self::UnsupportedSampleRate(_)
            | Self::DecoderFailed
            | Self::Encoder(_)
            | Self::Ffmpeg(_) => true,
            // Resource trouble, shutdown, a slow host or a crashed worker may all go
            // away on another attempt; the bus bounds how many attempts there are.
            Self::Io(_) | Self::Timeout(_) | Self::Cancelled | Self::Worker(_) => false,
        }
    }

    /// Whether the ffmpeg fallback may succeed where the in-process decoder gave up:
    /// formats and codecs symphonia does not read (AVI, Opus, HE-AAC, 5.1 AAC …).
    /// Damaged input is not retried with ffmpeg, which would happily turn half a file
    /// into half an MP3.
    pub(crate) fn ffmpeg_may_help(&self) -> bool {
        matches!(
            self,
            Self::NotMedia
                | Self::NoAudioTrack
                | Self::UnsupportedCodec(_)
                | Self::UnsupportedSampleRate(_)
                | Self::DecoderFailed
        )
    }
}
