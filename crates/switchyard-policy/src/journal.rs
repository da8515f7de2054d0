//! Append-only JSON Lines files: the local store's keys and spend log.
//!
//! Each record is one `write` of one line. A process killed at any point
//! leaves every completed line in the file (the page cache outlives the
//! process); a line cut short by a crash of the machine is dropped when the
//! file is opened again. How often the file is flushed to the disk itself is
//! the [`FsyncPolicy`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Takes `dir/name` as this process's lock on the directory (`flock`,
/// held while the returned file is open). Fails when another process (or
/// another store of this one) holds it: two writers of one journal drop each
/// other's records when either rewrites it.
pub(crate) fn lock_dir(dir: &Path, name: &str) -> Result<File, crate::error::PolicyError> {
    let lock = private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))?;
    match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(lock),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(crate::error::PolicyError::Store(format!(
            "{} is in use by another Switchyard process; give each replica a data_dir of its own",
            dir.display()
        ))),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// When appended lines are forced to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every line, before the request that wrote it is answered.
    Always,
    /// Once a second, by a background task (at most a second lost on power loss).
    #[default]
    EverySecond,
    /// Left to the operating system.
    Never,
}

/// One append-only file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    policy: FsyncPolicy,
    dirty: AtomicBool,
}

impl Journal {
    /// Opens (or creates) `path`, returning the complete lines already in it.
    /// A last line without its newline is kept when it is a whole JSON
    /// object (a line written by hand, by an editor that adds no final
    /// newline), which gets its newline; otherwise (a torn write) it is cut off.
    pub fn open(path: &Path, policy: FsyncPolicy) -> io::Result<(Journal, Vec<String>)> {
        let mut file = private_file().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            let whole = serde_json::from_slice::<serde_json::Value>(&bytes[complete..]).is_ok_and(|v| v.is_object());
            if whole {
                file.write_all(b"\n")?;
                bytes.push(b'\n');
                complete = bytes.len();
            } else {
                // Kept aside (`<file>.torn`): a hand-written line with a
                // typo is not lost without a trace.
                let torn = path.with_extension("torn");
                let tail = String::from_utf8_lossy(&bytes[complete..]).into_owned();
                set_aside(&torn, &[tail.as_str()])?;
                tracing::warn!(path = %path.display(), torn = %torn.display(), bytes = bytes.len() - complete, "a torn last line is set aside");
                file.set_len(complete as u64)?;
                file.seek(SeekFrom::End(0))?;
            }
        }
        let lines = bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        Ok((
            Journal {
                path: path.to_owned(),
                file: Mutex::new(file),
                policy,
                dirty: AtomicBool::new(false),
            },
            lines,
        ))
    }

    /// Appends one record as a line.
    pub fn append<T: Serialize>(&self, record: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock();
        let before = file.metadata()?.len();
        if let Err(e) = file.write_all(&line) {
            // A line cut short would swallow the next one: take it back.
            let _ = file.set_len(before);
            return Err(e);
        }
        match self.policy {
            FsyncPolicy::Always => {
                if let Err(e) = file.sync_data() {
                    // Reported as not written, so not left to take effect
                    // at the next start.
                    let _ = file.set_len(before);
                    return Err(e);
                }
            }
            FsyncPolicy::EverySecond => self.dirty.store(true, Ordering::Release),
            FsyncPolicy::Never => {}
        }
        Ok(())
    }

    /// Flushes to the disk if anything was appended since the last flush;
    /// a flush that fails is tried again the next time.
    pub fn sync_if_dirty(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // On a handle of its own, the lock let go first: appends do not
        // wait for the disk.
        let handle = self.file.lock().try_clone();
        if let Err(e) = handle.and_then(|file| file.sync_data()) {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// Replaces the whole file with `records` (written to a temporary file,
    /// flushed, then renamed over it), and appends from there on.
    pub fn rewrite<T: Serialize>(&self, records: &[T]) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        // Left by a rewrite that stopped half-way.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The handle written is the one appended to after the rename: no
        // reopening that could fail and leave appends going to the old,
        // unlinked file.
        let handle = private_file().read(true).append(true).create_new(true).open(&tmp)?;
        {
            let mut out = io::BufWriter::new(&handle);
            for record in records {
                serde_json::to_writer(&mut out, record).map_err(io::Error::other)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        handle.sync_all()?;
        let mut file = self.file.lock();
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path);
        *file = handle;
        Ok(())
    }

    /// Once the file has reached `limit` bytes: flushes it, moves it to
    /// `to()` and goes on in a new, empty file at the same path. Returns where
    /// the old file went, or `None` below the limit. If the new file cannot
    /// be made, the old one is moved back and appends go on there.
    pub fn rotate_past(&self, limit: u64, to: impl FnOnce() -> PathBuf) -> io::Result<Option<PathBuf>> {
        let mut file = self.file.lock();
        if file.metadata()?.len() < limit {
            return Ok(None);
        }
        file.sync_data()?;
        let target = to();
        std::fs::rename(&self.path, &target)?;
        match private_file().read(true).append(true).create_new(true).open(&self.path) {
            Ok(new) => *file = new,
            Err(e) => {
                std::fs::rename(&target, &self.path)?;
                return Err(e);
            }
        }
        sync_dir(&self.path);
        Ok(Some(target))
    }

    /// Every complete line as of one instant, with what `then` returned at
    /// that instant (no append or rotation in between). The file is opened
    /// and measured under the lock and read after it, so appends are not
    /// held up by a long read; a rotation meanwhile does not disturb the
    /// open file.
    pub fn read_lines_then<R>(&self, then: impl FnOnce() -> R) -> io::Result<(Vec<String>, R)> {
        let (file, len, r) = {
            let _guard = self.file.lock();
            let file = File::open(&self.path)?;
            let len = file.metadata()?.len();
            (file, len, then())
        };
        let mut bytes = Vec::new();
        file.take(len).read_to_end(&mut bytes)?;
        // A line that is not UTF-8 is left out, as one that does not parse.
        let lines = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| std::str::from_utf8(l).ok().map(str::to_owned))
            .collect();
        Ok((lines, r))
    }

    /// Reads every complete line again (for queries over the whole log).
    pub fn read_lines(&self) -> io::Result<Vec<String>> {
        let _guard = self.file.lock();
        let reader = BufReader::new(File::open(&self.path)?);
        reader.lines().collect()
    }
}

/// Appends `lines` to `path` (made readable by its owner only if new) and
/// flushes them to the disk: lines a store could not read, set aside rather
/// than lost.
pub(crate) fn set_aside(path: &Path, lines: &[&str]) -> io::Result<()> {
    let mut file = private_file().create(true).append(true).open(path)?;
    for line in lines {
        file.write_all(format!("{line}\n").as_bytes())?;
    }
    file.sync_all()
}

/// Options that create a file readable and writable by its owner only
/// (mode 0600 on Unix): the files under `data_dir` hold key hashes, spend
/// and who spent it. An existing file keeps its mode.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Makes a rename in the directory of `path` durable (best effort: not every
/// platform can open a directory).
pub(crate) fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn files_it_creates_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.jsonl");
        let (journal, _) = Journal::open(&path, FsyncPolicy::Never).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        journal.rewrite(&[serde_json::json!({"a": 1})]).unwrap();
        assert_eq!(mode(&path), 0o600, "a rewrite replaces the file with a private one");
        let moved = journal
            .rotate_past(0, || dir.path().join("keys.1.jsonl"))
            .unwrap()
            .unwrap();
        assert_eq!((mode(&moved), mode(&path)), (0o600, 0o600));
    }

    /// A whole record without its newline (written by hand) is a line,
    /// and the next append goes after it.
    #[test]
    fn a_whole_last_line_without_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"op\":\"delete_key\",\"token\":\"t\"}").unwrap();
        let (journal, lines) = Journal::open(&path, FsyncPolicy::Always).unwrap();
        assert_eq!(lines, vec!["{\"a\":1}", "{\"op\":\"delete_key\",\"token\":\"t\"}"]);
        journal.append(&serde_json::json!({"a": 3})).unwrap();
        let (_, lines) = Journal::open(&path, FsyncPolicy::Never).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn torn_tail_is_dropped_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let (journal, lines) = Journal::open(&path, FsyncPolicy::Always).unwrap();
        assert_eq!(lines, vec!["{\"a\":1}", "{\"a\":2}"]);
        // What was cut is kept aside.
        let torn = std::fs::read_to_string(dir.path().join("log.torn")).unwrap();
        assert_eq!(torn, "{\"a\":\n");
        journal.append(&serde_json::json!({"a": 3})).unwrap();
        let (_, lines) = Journal::open(&path, FsyncPolicy::Never).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], "{\"a\":3}");
        journal.rewrite(&[serde_json::json!({"b": 1})]).unwrap();
        journal.append(&serde_json::json!({"b": 2})).unwrap();
        assert_eq!(journal.read_lines().unwrap(), vec!["{\"b\":1}", "{\"b\":2}"]);
    }
}
