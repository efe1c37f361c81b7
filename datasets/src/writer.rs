//! Writing generated traces as Parquet files, chunks in parallel, with a progress bar.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::generator::{GenOptions, Generator};
use crate::schema::input_schema;

/// Errors while writing a generated data set.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot create output directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a generation run produced.
#[derive(Debug, Clone)]
pub struct GenSummary {
    pub files: Vec<PathBuf>,
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl GenSummary {
    /// Generation rate in rows per second.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A chunk written: its index, file and size in bytes.
type WrittenChunk = (u64, PathBuf, u64);

/// Parquet settings for generated files: zstd, dictionary pages, one row group per file.
fn writer_properties(rows: u64) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(rows.max(1) as usize))
        // Ids are (nearly) unique: a dictionary would only cost time.
        .set_column_dictionary_enabled(ColumnPath::from("contact_id"), false)
        .set_column_dictionary_enabled(ColumnPath::from("customer_id"), false)
        .build()
}

/// Generate `opts.rows` traces into `dir` as `traces-<seed>-<chunk>.parquet`, using every
/// core; the files depend only on `opts`. Shows a progress bar when `progress` is set.
pub fn write_parquet(
    opts: &GenOptions,
    dir: &Path,
    progress: bool,
) -> Result<GenSummary, GenError> {
    std::fs::create_dir_all(dir).map_err(|source| GenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let started = Instant::now();
    let generator = Generator::new(opts.clone());
    let bar = if progress {
        let bar = ProgressBar::new(opts.rows);
        bar.set_style(
            ProgressStyle::with_template(
                "generating {bar:40} {human_pos}/{human_len} traces, {per_sec}, eta {eta}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicU64::new(0);
    let chunks = opts.chunks();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunks.max(1) as usize);
    let results: Vec<Result<Vec<WrittenChunk>, GenError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= chunks {
                            return Ok(done);
                        }
                        let batch = generator.chunk(index);
                        let path = dir.join(format!("traces-{}-{index:05}.parquet", opts.seed));
                        let file = File::create(&path).map_err(|source| GenError::Create {
                            path: path.clone(),
                            source,
                        })?;
                        let write = |path: &Path| -> Result<(), GenError> {
                            let err = |source| GenError::Write {
                                path: path.to_path_buf(),
                                source,
                            };
                            let props = writer_properties(batch.num_rows() as u64);
                            let mut writer =
                                ArrowWriter::try_new(file, input_schema(), Some(props))
                                    .map_err(err)?;
                            writer.write(&batch).map_err(err)?;
                            writer.close().map_err(err)?;
                            Ok(())
                        };
                        write(&path)?;
                        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        bar.inc(batch.num_rows() as u64);
                        done.push((index, path, bytes));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread panicked"))
            .collect()
    });
    let mut files = Vec::new();
    for r in results {
        files.extend(r?);
    }
    files.sort_by_key(|(index, _, _)| *index);
    bar.finish_and_clear();
    Ok(GenSummary {
        rows: opts.rows,
        bytes: files.iter().map(|(_, _, b)| b).sum(),
        files: files.into_iter().map(|(_, p, _)| p).collect(),
        elapsed: started.elapsed(),
    })
}
