//! Workers that turn uploaded videos into MP3 files.
//!
//! The conversion engine decodes in-process with symphonia (MP4/MOV, MKV/WebM, WAV,
//! AIFF, CAF, Ogg, MP3, FLAC; AAC-LC, MP3, FLAC, Vorbis, PCM, ALAC, ADPCM) and encodes
//! with LAME, one packet at a time, so memory does not grow with the input. Inputs it
//! cannot read (AVI, Opus, HE-AAC, multichannel AAC …) go to the `ffmpeg` command when
//! one is available. [`Converter`] is the async entry point the `video` message handler
//! calls; [`convert`] is the blocking core for any `Read + Seek` source and
//! `Write + Seek` sink. Failures are [`ConvertError`]s whose text is the reason a job
//! carries and which say whether retrying can help.

mod engine;
mod error;
mod ffmpeg;
mod in_process;
mod report;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use platform::{ServiceApp, ServiceContext};

pub use engine::{Converter, ConverterConfig, default_workers};
pub use error::ConvertError;
pub use ffmpeg::find_on_path as find_ffmpeg;
pub use in_process::convert;
pub use report::{ConversionReport, Engine, Mp3Info, open_mp3, probe_mp3};

/// Settings of the service: flags, each with a `FLOTILLA_*` variable.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "converter-args")]
pub struct Args {
    /// Conversions run at once; default: one per CPU core.
    #[arg(long, env = "FLOTILLA_CONVERTER_WORKERS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub converter_workers: Option<u32>,
    /// The ffmpeg used for inputs the built-in decoder cannot read: a path, or `off`.
    /// Default: `ffmpeg` from PATH when there is one.
    #[arg(long, env = "FLOTILLA_CONVERTER_FFMPEG")]
    pub converter_ffmpeg: Option<String>,
    /// Longest a single conversion may take before it is stopped. The default stays
    /// under RabbitMQ's delivery acknowledgement timeout (`consumer_timeout`, 30 min by
    /// default), which counts from delivery and so also covers fetching the upload and
    /// storing the MP3: past it the broker takes the message back and hands it to
    /// another worker. Raising this on RabbitMQ means raising `consumer_timeout` too.
    /// (The embedded bus renews its leases while a conversion runs: no limit there.)
    #[arg(long, env = "FLOTILLA_CONVERTER_TIMEOUT", default_value = "25m",
          value_parser = platform::config::parse_duration)]
    pub converter_timeout: Duration,
}

platform::default_from_flags!(Args);

impl Args {
    pub fn converter_config(&self) -> ConverterConfig {
        let ffmpeg = match self.converter_ffmpeg.as_deref().map(str::trim) {
            None | Some("") => find_ffmpeg(),
            Some("off") => None,
            Some(path) => Some(PathBuf::from(path)),
        };
        ConverterConfig {
            workers: self
                .converter_workers
                .map_or_else(default_workers, |n| n as usize),
            ffmpeg,
            timeout: self.converter_timeout,
        }
    }
}

pub const NAME: &str = "converter";

/// Builds the service; `flotilla up`, `flotilla serve converter` and tests all call this.
pub async fn build(context: &ServiceContext, args: &Args) -> anyhow::Result<ServiceApp> {
    let converter = Converter::new(args.converter_config(), context.shutdown.clone());
    let config = converter.config();
    tracing::info!(
        workers = config.workers,
        ffmpeg = ?config.ffmpeg,
        timeout = ?config.timeout,
        "conversion engine ready"
    );
    // The `video` consumer (worker.rs): blobs in, MP3s out, outcomes on `mp3`.
    let blobs = storage::blob::BlobStore::from_url(&context.blob_url_or_local())?;
    let bus = bus::connect(
        &context.bus_url_or_embedded(),
        bus::BusOptions::for_service(NAME),
    )
    .await?;
    let consumer = worker::Worker {
        bus,
        blobs,
        converter,
        work_dir: context.data_dir.join("converter-work"),
    }
    .spawn(&context.tasks, context.shutdown.clone());
    let readiness = platform::health::Readiness::new().with_check("consumers", consumer.check_fn());
    Ok(ServiceApp::new(NAME, axum::Router::new()).with_readiness(readiness))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_choose_workers_ffmpeg_and_timeout() {
        let cli = Cli::try_parse_from([
            "x",
            "--converter-workers",
            "3",
            "--converter-ffmpeg",
            "off",
            "--converter-timeout",
            "90s",
        ])
        .expect("valid flags");
        let config = cli.args.converter_config();
        assert_eq!(config.workers, 3);
        assert_eq!(config.ffmpeg, None);
        assert_eq!(config.timeout, Duration::from_secs(90));

        let config = Cli::try_parse_from(["x", "--converter-ffmpeg", "/opt/ffmpeg/bin/ffmpeg"])
            .expect("valid flags")
            .args
            .converter_config();
        assert_eq!(config.workers, default_workers());
        assert_eq!(config.ffmpeg, Some(PathBuf::from("/opt/ffmpeg/bin/ffmpeg")));
        assert_eq!(config.timeout, Args::default().converter_timeout);

        assert!(Cli::try_parse_from(["x", "--converter-workers", "0"]).is_err());
    }
}
