//! The local store's spend log, cut into segments so that neither start-up
//! nor the disk grows with the whole history.
//!
//! Records are appended to `spend.jsonl`. Once it reaches
//! [`SpendLogLimits::segment_bytes`] it becomes `spend.<n>.jsonl` and a new
//! `spend.jsonl` starts. Each finished segment is then added to
//! `spend-summary.json`, the ledger (spend per subject and day) of every
//! segment up to `through`, written to a temporary file and renamed over the
//! old one. Start-up reads the summary and the current file only, so it takes
//! as long as one segment whatever the history. The newest
//! [`SpendLogLimits::keep_segments`] segments stay for `/spend/logs`; older
//! ones are deleted once the summary holds them.
//!
//! A crash at any step loses nothing and counts nothing twice: a segment
//! the summary does not hold yet (`n > through`) is added at the next start.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::journal::{FsyncPolicy, Journal, sync_dir};
use crate::spend::{Ledger, LogFilter, SpendRecord};

const CURRENT: &str = "spend.jsonl";
const SUMMARY: &str = "spend-summary.json";

/// How the spend log is cut and how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendLogLimits {
    /// Size at which `spend.jsonl` becomes a segment (default 64 MiB, about
    /// 150,000 records).
    pub segment_bytes: u64,
    /// Finished segments kept for `/spend/logs` (default 8); the ledger
    /// keeps every record's spend whatever this is.
    pub keep_segments: usize,
}

impl Default for SpendLogLimits {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            keep_segments: 8,
        }
    }
}

/// `spend-summary.json`: the ledger of every segment up to `through`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Summary {
    /// The last segment added (0: none).
    through: u64,
    ledger: Ledger,
}

/// The spend log of a data directory.
#[derive(Debug)]
pub struct SpendLog {
    dir: PathBuf,
    current: Journal,
    limits: SpendLogLimits,
    /// The number the next segment gets.
    next_segment: AtomicU64,
    /// Held while segments are added to the summary or deleted.
    summarising: Arc<Mutex<()>>,
    /// The threads adding segments to the summary.
    summaries: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What [`SpendLog::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The log, ready for appends.
    pub log: SpendLog,
    /// Spend of every record ever written.
    pub ledger: Ledger,
    /// Records read from the current file (the others come from the summary).
    pub records: usize,
}

impl SpendLog {
    /// Opens the spend log in `dir`: adds any finished segment the summary
    /// does not hold yet, then reads the current file.
    pub fn open(dir: &Path, fsync: FsyncPolicy, limits: SpendLogLimits) -> io::Result<Opened> {
        let summary = summarise(dir, limits.keep_segments)?;
        let newest = segments(dir)?.last().map_or(0, |(n, _)| *n);
        let (current, lines) = Journal::open(&dir.join(CURRENT), fsync)?;
        let mut ledger = summary.ledger;
        let mut records = 0;
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<SpendRecord>(line) {
                Ok(record) => {
                    ledger.add(&record);
                    records += 1;
                }
                Err(e) => tracing::warn!(line = i + 1, error = %e, "skipping an unreadable line of spend.jsonl"),
            }
        }
        Ok(Opened {
            log: SpendLog {
                dir: dir.to_owned(),
                current,
                limits,
                next_segment: AtomicU64::new(newest.max(summary.through) + 1),
                summarising: Arc::new(Mutex::new(())),
                summaries: Mutex::new(Vec::new()),
            },
            ledger,
            records,
        })
    }

    /// Appends one record; a full current file becomes a segment, added to
    /// the summary on a thread of its own.
    pub fn append(&self, record: &SpendRecord) -> io::Result<()> {
        self.current.append(record)?;
        let rotated = self.current.rotate_past(self.limits.segment_bytes, || {
            let n = self.next_segment.fetch_add(1, Ordering::Relaxed);
            segment_path(&self.dir, n)
        });
        match rotated {
            Ok(Some(_)) => {
                let (dir, keep, lock) = (self.dir.clone(), self.limits.keep_segments, self.summarising.clone());
                let spawned = std::thread::Builder::new()
                    .name("spend-summary".into())
                    .spawn(move || {
                        let _summarising = lock.lock();
                        if let Err(e) = summarise(&dir, keep) {
                            tracing::error!(error = %e, "cannot add a spend log segment to spend-summary.json; retried with the next segment or at the next start");
                        }
                    });
                match spawned {
                    Ok(handle) => {
                        let mut summaries = self.summaries.lock();
                        summaries.retain(|h| !h.is_finished());
                        summaries.push(handle);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start adding a spend log segment to spend-summary.json; retried with the next segment or at the next start")
                    }
                }
            }
            Ok(None) => {}
            // The record is written; the file is cut at a later append.
            Err(e) => tracing::error!(error = %e, "cannot start a new spend log segment"),
        }
        Ok(())
    }

    /// Waits until the segments cut so far are in the summary.
    pub fn wait_for_summaries(&self) {
        let pending = std::mem::take(&mut *self.summaries.lock());
        for handle in pending {
            let _ = handle.join();
        }
    }

    /// Flushes the current file if anything was appended since the last flush.
    pub fn sync_if_dirty(&self) -> io::Result<()> {
        self.current.sync_if_dirty()
    }

    /// Records matching `filter`, newest first, from the current file and
    /// then the kept segments, newest first.
    pub fn logs(&self, filter: &LogFilter) -> io::Result<Vec<SpendRecord>> {
        let mut out = Vec::new();
        let take = |lines: Vec<String>, out: &mut Vec<SpendRecord>| {
            out.extend(
                lines
                    .iter()
                    .rev()
                    .filter_map(|line| serde_json::from_str::<SpendRecord>(line).ok())
                    .filter(|r| filter.matches(r))
                    .take(filter.limit - out.len()),
            );
        };
        // The segments older than the current file as it was read: one cut
        // after the read holds records already taken.
        let (lines, bound) = self
            .current
            .read_lines_then(|| self.next_segment.load(Ordering::Relaxed))?;
        take(lines, &mut out);
        for (_, path) in segments(&self.dir)?.into_iter().rev().filter(|(n, _)| *n < bound) {
            if out.len() >= filter.limit {
                break;
            }
            match read_lines(&path) {
                Ok(lines) => take(lines, &mut out),
                // Deleted by the summary meanwhile: it was the oldest.
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("spend.{n}.jsonl"))
}

/// The finished segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let n = name
            .to_str()
            .and_then(|n| n.strip_prefix("spend."))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            found.push((n, entry.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// A segment's lines; a line that is not UTF-8 is skipped with a warning
/// (repaired text could still parse, and charge a name that does not exist),
/// so one damaged record costs only itself.
fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    let bytes = std::fs::read(path)?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| match std::str::from_utf8(l) {
            Ok(line) => Some(line.to_owned()),
            Err(_) => {
                tracing::warn!(file = %path.display(), "skipping a spend record that is not UTF-8");
                None
            }
        })
        .collect())
}

/// Adds the segments the summary does not hold yet to it, writes it, and
/// deletes the segments it holds beyond the newest `keep`. Returns it.
fn summarise(dir: &Path, keep: usize) -> io::Result<Summary> {
    let path = dir.join(SUMMARY);
    let mut summary: Summary = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not readable: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Summary::default(),
        Err(e) => return Err(e),
    };
    let all = segments(dir)?;
    let mut added = false;
    let through = summary.through;
    for (n, segment) in all.iter().filter(|(n, _)| *n > through) {
        for (i, line) in read_lines(segment)?.iter().enumerate() {
            match serde_json::from_str::<SpendRecord>(line) {
                Ok(record) => summary.ledger.add(&record),
                Err(e) => tracing::warn!(
                    file = %segment.display(),
                    line = i + 1,
                    error = %e,
                    "skipping an unreadable spend record"
                ),
            }
        }
        summary.through = *n;
        added = true;
    }
    if added {
        let tmp = dir.join(format!("{SUMMARY}.tmp"));
        {
            let mut out = io::BufWriter::new(
                crate::journal::private_file()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)?,
            );
            serde_json::to_writer(&mut out, &summary).map_err(io::Error::other)?;
            out.flush()?;
            out.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&path);
    }
    let held: Vec<_> = all.iter().filter(|(n, _)| *n <= summary.through).collect();
    for (_, old) in held.iter().take(held.len().saturating_sub(keep)) {
        std::fs::remove_file(old)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64, key: &str) -> SpendRecord {
        crate::spend::test_record(&format!("req-{i}"), 1_700_000_000_000 + i * 1000, key, 1_000 + i)
    }

    fn total(ledger: &Ledger, key: &str) -> i64 {
        ledger.get(&format!("key:{key}")).map_or(0, |s| s.total)
    }

    #[test]
    fn segments_are_summarised_kept_and_pruned_without_losing_spend() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpendLogLimits {
            segment_bytes: 2_000,
            keep_segments: 2,
        };
        let opened = SpendLog::open(dir.path(), FsyncPolicy::Never, limits).unwrap();
        let expected: i64 = (0..200).map(|i| 1_000 + i).sum();
        for i in 0..200 {
            opened.log.append(&record(i, "a")).unwrap();
        }
        // Summaries run on threads of their own: wait for them.
        opened.log.wait_for_summaries();
        let log = opened.log;
        let all = segments(dir.path()).unwrap();
        assert!(all.len() <= 3, "old segments are deleted: {all:?}");
        assert!(dir.path().join(SUMMARY).exists());

        // The newest records come first, across files, up to the limit:
        // what the current file and the two kept segments hold.
        let ids = |limit: usize| -> Vec<String> {
            let filter = LogFilter {
                limit,
                ..LogFilter::default()
            };
            log.logs(&filter).unwrap().into_iter().map(|r| r.request_id).collect()
        };
        let kept = ids(1_000);
        assert!(kept.len() > 10 && kept.len() < 200, "{}", kept.len());
        let wanted: Vec<_> = (200 - kept.len()..200).rev().map(|i| format!("req-{i}")).collect();
        assert_eq!(kept, wanted);
        assert_eq!(ids(7), wanted[..7]);
        drop(log);

        // A restart reads the summary and the current file: every record's
        // spend is there once.
        let reopened = SpendLog::open(dir.path(), FsyncPolicy::Never, limits).unwrap();
        assert_eq!(total(&reopened.ledger, "a"), expected);
        assert!(reopened.records < 200, "start-up read {} records", reopened.records);

        // A crash after a segment was cut but before the summary held it:
        // the next start adds it.
        for i in 200..210 {
            reopened.log.append(&record(i, "b")).unwrap();
        }
        reopened.log.wait_for_summaries();
        drop(reopened);
        let n = segments(dir.path()).unwrap().last().map_or(0, |(n, _)| *n) + 1;
        std::fs::rename(dir.path().join(CURRENT), segment_path(dir.path(), n)).unwrap();
        let after_crash = SpendLog::open(dir.path(), FsyncPolicy::Never, limits).unwrap();
        assert_eq!(total(&after_crash.ledger, "a"), expected);
        assert_eq!(
            total(&after_crash.ledger, "b"),
            (200..210).map(|i| 1_000 + i).sum::<i64>()
        );
        assert_eq!(after_crash.records, 0);
    }
}
