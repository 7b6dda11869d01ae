//! The async face of the converter: a bounded pool of conversions on blocking threads,
//! each with a deadline, stopped by shutdown, falling back to ffmpeg when the
//! in-process decoder cannot read the input.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ConvertError;
use crate::report::{ConversionReport, Engine};
use crate::{ffmpeg, in_process, report};

/// How conversions run.
#[derive(Debug, Clone)]
pub struct ConverterConfig {
    /// Conversions running at once (each one keeps a core busy).
    pub workers: usize,
    /// The ffmpeg executable for inputs symphonia cannot read; `None` turns the
    /// fallback off.
    pub ffmpeg: Option<PathBuf>,
    /// Longest a single conversion may take, fallback included.
    pub timeout: Duration,
}

impl Default for ConverterConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            ffmpeg: ffmpeg::find_on_path(),
            // As the service's default (lib.rs): under RabbitMQ's consumer_timeout.
            timeout: Duration::from_secs(25 * 60),
        }
    }
}

/// One per core: conversion is CPU-bound, more would only queue inside the OS.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Converts files to MP3, at most `workers` at a time. Cheap to clone; clones share the
/// pool.
#[derive(Debug, Clone)]
pub struct Converter {
    config: Arc<ConverterConfig>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Converter {
    /// `shutdown` cancels every running and waiting conversion ([`ConvertError::Cancelled`]).
    pub fn new(config: ConverterConfig, shutdown: CancellationToken) -> Self {
        let workers = config.workers.max(1);
        Self {
            config: Arc::new(ConverterConfig { workers, ..config }),
            permits: Arc::new(Semaphore::new(workers)),
            shutdown,
        }
    }

    pub fn config(&self) -> &ConverterConfig {
        &self.config
    }

    /// Converts the media file at `input` into an MP3 at `output` (created or
    /// replaced). On failure `output` is removed, so a half-written MP3 is never left
    /// behind for someone to serve.
    pub async fn convert_file(
        &self,
        input: &Path,
        output: &Path,
    ) -> Result<ConversionReport, ConvertError> {
        let started = std::time::Instant::now();
        let result = self.convert_file_inner(input, output).await;
        let outcome = match &result {
            Ok(report) => {
                let engine = match report.engine {
                    Engine::InProcess => "in_process",
                    Engine::Ffmpeg => "ffmpeg",
                };
                metrics::histogram!("converter_conversion_seconds", "engine" => engine)
                    .record(started.elapsed().as_secs_f64());
                tracing::info!(
                    engine,
                    audio_secs = report.duration_secs,
                    bytes = report.bytes_written,
                    took_ms = started.elapsed().as_millis() as u64,
                    "converted to mp3"
                );
                engine
            }
            Err(err) => {
                // Best effort: the file may never have been created.
                let _ = tokio::fs::remove_file(output).await;
                let permanent = err.is_permanent();
                tracing::info!(reason = %err, permanent, "conversion failed");
                if permanent {
                    "failed_permanent"
                } else {
                    "failed_transient"
                }
            }
        };
        metrics::counter!("converter_conversions_total", "outcome" => outcome).increment(1);
        result
    }

    async fn convert_file_inner(
        &self,
        input: &Path,
        output: &Path,
    ) -> Result<ConversionReport, ConvertError> {
        let _permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => {
                permit.map_err(|_| ConvertError::Cancelled)?
            }
            () = self.shutdown.cancelled() => return Err(ConvertError::Cancelled),
        };
        // The clock starts once a worker is free: waiting in line is not slowness.
        let deadline = Instant::now() + self.config.timeout;
        let job = self.shutdown.child_token();

        let in_process_error = match self.run_in_process(input, output, &job, deadline).await {
            Ok(report) => return Ok(report),
            Err(err) => err,
        };
        let Some(ffmpeg_path) = self.config.ffmpeg.as_deref() else {
            return Err(in_process_error);
        };
        if !in_process_error.ffmpeg_may_help() {
            return Err(in_process_error);
        }
        tracing::info!(
            reason = %in_process_error,
            "in-process decoder cannot read the input, trying ffmpeg"
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        match ffmpeg::convert(ffmpeg_path, input, output, remaining, &job).await {
            Ok(()) => {}
            // ffmpeg's own words are better unless it only managed a generic failure.
            Err(ConvertError::Ffmpeg(_)) if in_process_error.is_permanent() => {
                return Err(in_process_error);
            }
            Err(ConvertError::Timeout(_)) => {
                return Err(ConvertError::Timeout(self.config.timeout));
            }
            Err(err) => return Err(err),
        }
        let output = output.to_owned();
        let (info, bytes_written) = spawn_blocking(move || {
            let file = File::open(&output)?;
            let bytes_written = file.metadata()?.len();
            Ok((report::probe_mp3(file)?, bytes_written))
        })
        .await?;
        Ok(ConversionReport {
            duration_secs: info.duration_secs,
            sample_rate: info.sample_rate,
            channels: info.channels,
            bytes_written,
            engine: Engine::Ffmpeg,
        })
    }

    /// symphonia + LAME on a blocking thread, stopped through `job` at the deadline.
    async fn run_in_process(
        &self,
        input: &Path,
        output: &Path,
        job: &CancellationToken,
        deadline: Instant,
    ) -> Result<ConversionReport, ConvertError> {
        let (input, output, token) = (input.to_owned(), output.to_owned(), job.clone());
        let mut work = std::pin::pin!(spawn_blocking(move || {
            let extension = input
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_owned);
            let source = File::open(&input)?;
            let sink = File::create(&output)?;
            in_process::convert(source, extension.as_deref(), sink, &token)
        }));
        tokio::select! {
            result = &mut work => result,
            () = tokio::time::sleep_until(deadline) => {
                // The worker checks the token between packets; wait for it so that the
                // output file is closed before anyone touches it.
                job.cancel();
                let _ = work.await;
                Err(ConvertError::Timeout(self.config.timeout))
            }
        }
    }
}

/// Runs CPU-bound work on tokio's blocking pool; a panic becomes a (retryable) error
/// instead of taking the consumer down.
async fn spawn_blocking<T, F>(work: F) -> Result<T, ConvertError>
where
    F: FnOnce() -> Result<T, ConvertError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) => Err(ConvertError::Worker(err.to_string())),
    }
}
