//! The decision log on disk: append-only segment files of checksummed records, so a record
//! costs its own bytes and a batch of them one shared `fdatasync`, instead of the pages a
//! B-tree rewrites for each.
//!
//! Files, in `<data dir>/decision-log/`:
//! - `<number, 16 digits>.seg`: the magic `APDPSEG1`, then frames `len: u32 LE | crc32: u32 LE |
//!   payload`, where the payload is the record's key (16 bytes), its time (i64 LE, ms) and the
//!   record as JSON. A record's key is its decision id as a UUID (all of the server's ids are
//!   UUIDv7), or the first 16 bytes of the id's SHA-256 for anything else.
//! - `<number>.idx`, written when a segment is sealed: its keys sorted, each with the frame's
//!   offset, then the segment's summary (records, bytes, time and key range) and a checksum.
//!   Lookups by id binary-search it on disk; opening reads only the summaries.
//!
//! Only the last segment takes appends. It is sealed (synced, indexed) once it passes the
//! segment size, and a new one starts. At open its frames are checked and a torn tail (a crash
//! in the middle of an append) is cut off. Retention deletes whole sealed segments, oldest
//! first, so it never rewrites or scans anything. Records are read in the order they were
//! appended.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::Digest;

use super::group_sync::GroupSync;
use crate::domain::{LogRecord, Millis};
use crate::error::PdpError;

const SEGMENT_MAGIC: &[u8; 8] = b"APDPSEG1";
const INDEX_MAGIC: &[u8; 8] = b"APDPIDX1";
/// len + crc.
const FRAME_HEADER: u64 = 8;
/// key + time, before the JSON.
const PAYLOAD_PREFIX: usize = 24;
/// One index entry: key (16, big-endian so entries sort as keys) + frame offset (u32).
const INDEX_ENTRY: u64 = 20;
/// The index's summary: records, bytes (u64), min/max time (i64), min/max key (u128), crc32.
const INDEX_SUMMARY: u64 = 8 + 8 + 8 + 8 + 16 + 16 + 4;
/// A frame longer than this is not one (a torn or corrupt length).
const MAX_FRAME: u32 = 16 << 20;

type Key = u128;

/// The key a record is indexed under.
fn key_of(id: &str) -> Key {
    match uuid::Uuid::parse_str(id) {
        Ok(uuid) => uuid.as_u128(),
        Err(_) => {
            let digest = sha2::Sha256::digest(id.as_bytes());
            let mut first = [0u8; 16];
            first.copy_from_slice(&digest[..16]);
            u128::from_be_bytes(first)
        }
    }
}

fn io(context: impl std::fmt::Display, e: std::io::Error) -> PdpError {
    PdpError::Storage(format!("decision log: {context}: {e}"))
}

/// What a segment holds, known without reading it.
#[derive(Clone, Debug)]
struct Summary {
    number: u64,
    records: u64,
    /// File length covered by whole frames (the magic included).
    bytes: u64,
    min_at: Millis,
    max_at: Millis,
    min_key: Key,
    max_key: Key,
}

impl Summary {
    fn empty(number: u64) -> Summary {
        Summary {
            number,
            records: 0,
            bytes: SEGMENT_MAGIC.len() as u64,
            min_at: Millis::MAX,
            max_at: Millis::MIN,
            min_key: Key::MAX,
            max_key: Key::MIN,
        }
    }

    fn add(&mut self, key: Key, at: Millis, frame_len: u64) {
        self.records += 1;
        self.bytes += frame_len;
        self.min_at = self.min_at.min(at);
        self.max_at = self.max_at.max(at);
        self.min_key = self.min_key.min(key);
        self.max_key = self.max_key.max(key);
    }
}

/// One frame read back: where it starts and ends, its key, time and JSON.
struct Frame {
    offset: u64,
    end: u64,
    key: Key,
    at: Millis,
    json: Vec<u8>,
}

/// Reads the frame at `offset` of a segment whose whole frames end at `limit`; `None` at the
/// end, or where the bytes are not a whole, intact frame.
fn read_frame(reader: &mut impl Read, offset: u64, limit: u64) -> Option<Frame> {
    if offset + FRAME_HEADER > limit {
        return None;
    }
    let mut header = [0u8; FRAME_HEADER as usize];
    reader.read_exact(&mut header).ok()?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_FRAME || (len as usize) < PAYLOAD_PREFIX {
        return None;
    }
    let end = offset + FRAME_HEADER + u64::from(len);
    if end > limit {
        return None;
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload).ok()?;
    if crc32fast::hash(&payload) != crc {
        return None;
    }
    let key = u128::from_be_bytes(payload[..16].try_into().ok()?);
    let at = Millis::from_le_bytes(payload[16..24].try_into().ok()?);
    payload.drain(..PAYLOAD_PREFIX);
    Some(Frame {
        offset,
        end,
        key,
        at,
        json: payload,
    })
}

fn encode_frame(record: &LogRecord, out: &mut Vec<u8>) -> Result<(Key, u64), PdpError> {
    let key = key_of(&record.id);
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER as usize]);
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&record.at.to_le_bytes());
    serde_json::to_writer(&mut *out, record).map_err(|e| PdpError::Corrupt {
        key: record.id.clone(),
        reason: format!("cannot encode: {e}"),
    })?;
    let payload = &out[start + FRAME_HEADER as usize..];
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME)
        .ok_or_else(|| PdpError::Corrupt {
            key: record.id.clone(),
            reason: format!("record of {} bytes is too large to log", payload.len()),
        })?;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok((key, (out.len() - start) as u64))
}

fn decode(frame: &Frame) -> Result<LogRecord, PdpError> {
    serde_json::from_slice(&frame.json).map_err(|e| PdpError::Corrupt {
        key: format!("decision log frame at {}", frame.offset),
        reason: e.to_string(),
    })
}

/// The segment being appended to.
struct Active {
    file: Arc<File>,
    summary: Summary,
    /// Its records' frame offsets by key.
    offsets: HashMap<Key, u64>,
}

struct State {
    /// Sealed segments, oldest first.
    sealed: Vec<Summary>,
    active: Active,
    /// Appends so far; an append's ticket is this count after it.
    appended: u64,
}

/// A position to read from: a segment and an offset in it.
#[derive(Clone, Copy)]
struct Position {
    number: u64,
    offset: u64,
}

pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Appends on disk (tickets are append counts), one sync for all waiting.
    synced: GroupSync,
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it), cutting off a torn tail. Segments pass
    /// `segment_bytes` before they are sealed.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<SegmentLog, PdpError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir.display(), e))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir.display(), e))? {
            let name = entry.map_err(|e| io(dir.display(), e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        let log_dir = dir.to_owned();
        let segment_path = |n: u64| log_dir.join(format!("{n:016}.seg"));
        let mut sealed = Vec::new();
        let last = numbers.pop();
        for number in numbers {
            let summary = match read_index_summary(&index_path(dir, number)) {
                Some(summary) if summary.number == number => summary,
                _ => {
                    // Sealed, but its index was never written (a crash while sealing) or is
                    // damaged: index it again.
                    let (summary, offsets) = scan(&segment_path(number), number)?;
                    write_index(dir, &summary, &offsets)?;
                    summary
                }
            };
            sealed.push(summary);
        }
        let active = match last {
            Some(number) => {
                let path = segment_path(number);
                let (summary, offsets) = scan(&path, number)?;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| io(path.display(), e))?;
                let on_disk = file.metadata().map_err(|e| io(path.display(), e))?.len();
                if on_disk > summary.bytes {
                    tracing::warn!(
                        segment = %path.display(),
                        cut = on_disk - summary.bytes,
                        "decision log: cutting off a torn tail (an append a crash interrupted)"
                    );
                    file.set_len(summary.bytes)
                        .map_err(|e| io(path.display(), e))?;
                    file.sync_all().map_err(|e| io(path.display(), e))?;
                }
                Active {
                    file: Arc::new(file),
                    summary,
                    offsets: offsets.into_iter().collect(),
                }
            }
            None => create_segment(dir, 1)?,
        };
        Ok(SegmentLog {
            dir: dir.to_owned(),
            // Index entries hold 32-bit offsets.
            segment_bytes: segment_bytes.clamp(4096, 1 << 30),
            state: Mutex::new(State {
                sealed,
                active,
                appended: 0,
            }),
            synced: GroupSync::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:016}.seg"))
    }

    /// Appends `records` (one write) and returns the ticket `sync` takes. Blocking.
    fn write(&self, records: &[LogRecord]) -> Result<u64, PdpError> {
        let mut buffer = Vec::with_capacity(records.len() * 512);
        let mut frames = Vec::with_capacity(records.len());
        for record in records {
            frames.push((encode_frame(record, &mut buffer)?, record.at));
        }
        let mut state = self.state();
        if state.active.summary.bytes >= self.segment_bytes {
            self.seal(&mut state)?;
        }
        let active = &mut state.active;
        let start = active.summary.bytes;
        if let Err(e) = active.file.write_all_at(&buffer, start) {
            // Leave no partial frame behind for a later append to follow.
            let _ = active.file.set_len(start);
            return Err(io("append", e));
        }
        metrics::counter!("anchor_pdp_decision_log_bytes_total").increment(buffer.len() as u64);
        let mut offset = start;
        for ((key, len), at) in frames {
            active.offsets.insert(key, offset);
            active.summary.add(key, at, len);
            offset += len;
        }
        state.appended += 1;
        Ok(state.appended)
    }

    /// Seals the active segment (synced, indexed) and starts the next.
    fn seal(&self, state: &mut State) -> Result<(), PdpError> {
        let active = &state.active;
        active
            .file
            .sync_data()
            .map_err(|e| io("sync before sealing", e))?;
        let mut offsets: Vec<(Key, u64)> = active.offsets.iter().map(|(k, o)| (*k, *o)).collect();
        offsets.sort_unstable();
        write_index(&self.dir, &active.summary, &offsets)?;
        let next = create_segment(&self.dir, active.summary.number + 1)?;
        let done = std::mem::replace(&mut state.active, next);
        state.sealed.push(done.summary);
        Ok(())
    }

    /// The appends made so far and the file to sync to cover them: appends before `covered`
    /// are in the active segment or in a sealed one, synced when it was sealed.
    fn sync_target(&self) -> (u64, Arc<File>) {
        let state = self.state();
        (state.appended, state.active.file.clone())
    }

    /// Returns once every append up to `ticket` is on disk (fdatasync), one sync for all the
    /// callers waiting at the time.
    async fn sync(&self, ticket: u64) -> Result<(), PdpError> {
        self.synced
            .until(ticket, || {
                let (covered, file) = self.sync_target();
                let work: Box<dyn FnOnce() -> Result<(), PdpError> + Send> = Box::new(move || {
                    let started = std::time::Instant::now();
                    file.sync_data().map_err(|e| io("fdatasync", e))?;
                    metrics::histogram!("anchor_pdp_decision_log_sync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    Ok(())
                });
                (covered, work)
            })
            .await
    }

    /// Appends `records` and returns once they are durable.
    pub async fn append(self: &Arc<Self>, records: Vec<LogRecord>) -> Result<(), PdpError> {
        if records.is_empty() {
            return Ok(());
        }
        let log = self.clone();
        let ticket = tokio::task::spawn_blocking(move || log.write(&records))
            .await
            .map_err(|e| PdpError::Storage(format!("decision log write task failed: {e}")))??;
        self.sync(ticket).await
    }

    /// Appends `records` and syncs them, blocking. For opening and recovery.
    pub fn append_blocking(&self, records: &[LogRecord]) -> Result<(), PdpError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(records)?;
        self.sync_blocking()
    }

    /// Syncs the active segment now (blocking).
    pub fn sync_blocking(&self) -> Result<(), PdpError> {
        let (covered, file) = self.sync_target();
        file.sync_data().map_err(|e| io("fdatasync", e))?;
        self.synced.covered(covered);
        Ok(())
    }

    /// Records kept.
    pub fn records(&self) -> u64 {
        let state = self.state();
        state.sealed.iter().map(|s| s.records).sum::<u64>() + state.active.summary.records
    }

    /// Bytes on disk, and segments.
    pub fn size(&self) -> (u64, usize) {
        let state = self.state();
        (
            state.sealed.iter().map(|s| s.bytes).sum::<u64>() + state.active.summary.bytes,
            state.sealed.len() + 1,
        )
    }

    /// Where the record `id` is, if it is kept.
    fn locate(&self, id: &str) -> Result<Option<(Position, u64)>, PdpError> {
        let key = key_of(id);
        let candidates: Vec<Summary> = {
            let state = self.state();
            if let Some(offset) = state.active.offsets.get(&key) {
                let position = Position {
                    number: state.active.summary.number,
                    offset: *offset,
                };
                return Ok(Some((position, state.active.summary.bytes)));
            }
            state
                .sealed
                .iter()
                .rev()
                .filter(|s| s.min_key <= key && key <= s.max_key)
                .cloned()
                .collect()
        };
        for summary in candidates {
            let path = index_path(&self.dir, summary.number);
            if let Some(offset) = search_index(&path, &summary, key)? {
                let position = Position {
                    number: summary.number,
                    offset,
                };
                return Ok(Some((position, summary.bytes)));
            }
        }
        Ok(None)
    }

    /// The frame `locate` found at `position` (in a segment whose frames end at `limit`);
    /// `None` if retention has deleted its segment since.
    fn frame_at(&self, position: Position, limit: u64) -> Result<Option<Frame>, PdpError> {
        let file = match File::open(self.segment_path(position.number)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", e)),
        };
        let mut reader = ReadAt {
            file: &file,
            offset: position.offset,
        };
        match read_frame(&mut reader, position.offset, limit) {
            Some(frame) => Ok(Some(frame)),
            None => Err(PdpError::Corrupt {
                key: format!(
                    "decision log segment {} at {}",
                    position.number, position.offset
                ),
                reason: "an indexed frame does not read back whole".into(),
            }),
        }
    }

    /// The record `id`, if it is kept.
    pub fn get(&self, id: &str) -> Result<Option<LogRecord>, PdpError> {
        let Some((position, limit)) = self.locate(id)? else {
            return Ok(None);
        };
        match self.frame_at(position, limit)? {
            Some(frame) => {
                let record = decode(&frame)?;
                Ok((record.id == id).then_some(record))
            }
            None => Ok(None),
        }
    }

    /// Records in append order after the record `after` (from the start without it), that
    /// `keep` accepts; stops after `limit` matches or `scan_limit` records looked at. Returns
    /// them and the id of the last record looked at (the cursor to go on from).
    ///
    /// A cursor no longer kept (retention took it) resumes at the first record with a later id.
    pub fn read(
        &self,
        after: Option<&str>,
        keep: impl Fn(&LogRecord) -> bool,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<LogRecord>, Option<String>), PdpError> {
        let segments: Vec<(u64, u64, Key)> = {
            let state = self.state();
            state
                .sealed
                .iter()
                .chain(std::iter::once(&state.active.summary))
                .map(|s| (s.number, s.bytes, s.max_key))
                .collect()
        };
        let mut start = Position {
            number: 0,
            offset: SEGMENT_MAGIC.len() as u64,
        };
        let mut later_than = None;
        if let Some(after) = after {
            match self.locate(after)? {
                Some((position, limit)) => {
                    start = position;
                    // Step over the cursor's own frame.
                    match self.frame_at(position, limit)? {
                        Some(frame) => start.offset = frame.end,
                        None => return Err(io("read", std::io::ErrorKind::NotFound.into())),
                    }
                }
                None => {
                    let key = key_of(after);
                    later_than = Some(key);
                    start.number = segments
                        .iter()
                        .find(|(_, _, max_key)| *max_key > key)
                        .map_or(u64::MAX, |(number, _, _)| *number);
                }
            }
        }
        let mut out = Vec::new();
        let mut last = None;
        let mut scanned = 0;
        for (number, bytes, _) in segments.into_iter().filter(|(n, _, _)| *n >= start.number) {
            let file = match File::open(self.segment_path(number)) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", e)),
            };
            let mut offset = if number == start.number {
                start.offset
            } else {
                SEGMENT_MAGIC.len() as u64
            };
            let mut reader = BufReader::with_capacity(
                256 << 10,
                ReadAt {
                    file: &file,
                    offset,
                },
            );
            while let Some(frame) = read_frame(&mut reader, offset, bytes) {
                if scanned >= scan_limit || out.len() >= limit {
                    return Ok((out, last));
                }
                scanned += 1;
                offset = frame.end;
                if later_than.is_some_and(|key| frame.key <= key) {
                    continue;
                }
                let record = decode(&frame)?;
                last = Some(record.id.clone());
                if keep(&record) {
                    out.push(record);
                }
            }
        }
        Ok((out, last))
    }

    /// The latest `limit` records with a time in `during` that `keep` accepts, newest first,
    /// and whether `scan_limit` records were looked at before the search could finish.
    ///
    /// Segments are read from the newest back and those whose times lie outside `during` are
    /// skipped unread, so a question about the last hour costs the last hour's segments
    /// whatever the log holds. `contains` are texts every record `keep` accepts holds in some
    /// string field (an id it must have, say): a record whose encoding lacks one is passed over
    /// without being decoded, which is most of the cost of a search.
    pub fn newest(
        &self,
        during: std::ops::RangeInclusive<Millis>,
        contains: &[&str],
        keep: impl Fn(&LogRecord) -> bool,
        limit: usize,
        scan_limit: usize,
    ) -> Result<(Vec<LogRecord>, bool), PdpError> {
        // As the encoder writes them inside a JSON string (escaping is per character, so the
        // escaped text of a part is part of the escaped whole).
        let finders: Vec<memchr::memmem::Finder<'static>> = contains
            .iter()
            .filter_map(|text| {
                let quoted = serde_json::to_string(text).ok()?;
                let escaped = quoted.strip_prefix('"')?.strip_suffix('"')?;
                (!escaped.is_empty()).then(|| memchr::memmem::Finder::new(escaped).into_owned())
            })
            .collect();
        let segments: Vec<Summary> = {
            let state = self.state();
            state
                .sealed
                .iter()
                .chain(std::iter::once(&state.active.summary))
                .rev()
                .filter(|s| {
                    s.records > 0 && s.max_at >= *during.start() && s.min_at <= *during.end()
                })
                .cloned()
                .collect()
        };
        let mut out = Vec::new();
        let mut scanned = 0;
        for summary in segments {
            if out.len() >= limit {
                break;
            }
            let file = match File::open(self.segment_path(summary.number)) {
                Ok(file) => file,
                // Pruned since the list was taken: older still, so nothing newer is missed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", e)),
            };
            let mut offset = SEGMENT_MAGIC.len() as u64;
            let mut reader = BufReader::with_capacity(
                256 << 10,
                ReadAt {
                    file: &file,
                    offset,
                },
            );
            // First where the candidates are (in range, every text present), in append
            // order; then, newest first, decode only until enough are kept: the newest 500 of
            // a 64 MiB segment cost 500 decodes, not the segment's.
            let mut candidates = Vec::new();
            let mut cut_short = false;
            while let Some(frame) = read_frame(&mut reader, offset, summary.bytes) {
                if scanned >= scan_limit {
                    cut_short = true;
                    break;
                }
                scanned += 1;
                let at = offset;
                offset = frame.end;
                if during.contains(&frame.at)
                    && finders.iter().all(|f| f.find(&frame.json).is_some())
                {
                    candidates.push(at);
                }
            }
            for at in candidates.into_iter().rev() {
                if out.len() >= limit {
                    break;
                }
                let mut at_frame = ReadAt {
                    file: &file,
                    offset: at,
                };
                let frame = read_frame(&mut at_frame, at, summary.bytes).ok_or_else(|| {
                    PdpError::Corrupt {
                        key: format!("decision log segment {} at {at}", summary.number),
                        reason: "a frame read a moment ago does not read back whole".into(),
                    }
                })?;
                let record = decode(&frame)?;
                if keep(&record) {
                    out.push(record);
                }
            }
            if cut_short {
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    /// Deletes whole segments: those holding only records older than `older_than`, then the
    /// oldest while more than `max_records` are kept. The segment being appended to is sealed
    /// first when all of it has expired or it alone holds too many. Returns (deleted, kept).
    pub fn prune(&self, older_than: Millis, max_records: usize) -> Result<(u64, u64), PdpError> {
        let max_records = max_records as u64;
        let mut doomed = Vec::new();
        let mut deleted = 0;
        {
            let mut state = self.state();
            let active = &state.active.summary;
            if active.records > 0 && (active.max_at < older_than || active.records > max_records) {
                self.seal(&mut state)?;
            }
            let mut kept: u64 =
                state.sealed.iter().map(|s| s.records).sum::<u64>() + state.active.summary.records;
            while let Some(oldest) = state.sealed.first() {
                if oldest.max_at >= older_than && kept <= max_records {
                    break;
                }
                kept -= oldest.records;
                deleted += oldest.records;
                doomed.push(state.sealed.remove(0).number);
            }
        }
        for number in doomed {
            for path in [self.segment_path(number), index_path(&self.dir, number)] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(path.display(), e)),
                }
            }
        }
        Ok((deleted, self.records()))
    }
}

/// Reads a file from an offset on, with positioned reads (several readers share no cursor).
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

fn index_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.idx"))
}

fn create_segment(dir: &Path, number: u64) -> Result<Active, PdpError> {
    let path = dir.join(format!("{number:016}.seg"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io(path.display(), e))?;
    file.write_all_at(SEGMENT_MAGIC, 0)
        .map_err(|e| io(path.display(), e))?;
    file.sync_all().map_err(|e| io(path.display(), e))?;
    // The new file must be found after a crash.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir.display(), e))?;
    Ok(Active {
        file: Arc::new(file),
        summary: Summary::empty(number),
        offsets: HashMap::new(),
    })
}

/// Reads a segment's whole frames: its summary and each frame's key and offset.
fn scan(path: &Path, number: u64) -> Result<(Summary, Vec<(Key, u64)>), PdpError> {
    let file = File::open(path).map_err(|e| io(path.display(), e))?;
    let len = file.metadata().map_err(|e| io(path.display(), e))?.len();
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0)
        .map_err(|e| io(path.display(), e))?;
    if &magic != SEGMENT_MAGIC {
        return Err(PdpError::Corrupt {
            key: path.display().to_string(),
            reason: "not a decision-log segment".into(),
        });
    }
    let mut summary = Summary::empty(number);
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_MAGIC.len() as u64;
    let mut reader = BufReader::with_capacity(
        1 << 20,
        ReadAt {
            file: &file,
            offset,
        },
    );
    while let Some(frame) = read_frame(&mut reader, offset, len) {
        offsets.push((frame.key, frame.offset));
        summary.add(frame.key, frame.at, frame.end - frame.offset);
        offset = frame.end;
    }
    Ok((summary, offsets))
}

/// Writes a sealed segment's index (sorted keys and offsets, then its summary) and syncs it.
fn write_index(dir: &Path, summary: &Summary, offsets: &[(Key, u64)]) -> Result<(), PdpError> {
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    let mut bytes = Vec::with_capacity(8 + sorted.len() * INDEX_ENTRY as usize + 64);
    bytes.extend_from_slice(INDEX_MAGIC);
    for (key, offset) in &sorted {
        bytes.extend_from_slice(&key.to_be_bytes());
        let offset = u32::try_from(*offset).map_err(|_| PdpError::Corrupt {
            key: format!("segment {}", summary.number),
            reason: "a segment beyond 4 GiB".into(),
        })?;
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    bytes.extend_from_slice(&summary.number.to_le_bytes());
    bytes.extend_from_slice(&summary.records.to_le_bytes());
    bytes.extend_from_slice(&summary.bytes.to_le_bytes());
    bytes.extend_from_slice(&summary.min_at.to_le_bytes());
    bytes.extend_from_slice(&summary.max_at.to_le_bytes());
    bytes.extend_from_slice(&summary.min_key.to_be_bytes());
    bytes.extend_from_slice(&summary.max_key.to_be_bytes());
    let crc = crc32fast::hash(&bytes[8..]);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let path = index_path(dir, summary.number);
    let temp = path.with_extension("idx.tmp");
    std::fs::write(&temp, &bytes).map_err(|e| io(temp.display(), e))?;
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(temp.display(), e))?;
    std::fs::rename(&temp, &path).map_err(|e| io(path.display(), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir.display(), e))?;
    Ok(())
}

/// A sealed segment's summary from its index, if the index is whole.
fn read_index_summary(path: &Path) -> Option<Summary> {
    let bytes = std::fs::read(path).ok()?;
    let trailer = usize::try_from(INDEX_SUMMARY + 8).ok()?;
    if bytes.len() < 8 + trailer || &bytes[..8] != INDEX_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(&body[8..]) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let s = &body[body.len() - (trailer - 4)..];
    let u64_at = |i: usize| s[i..i + 8].try_into().ok().map(u64::from_le_bytes);
    let i64_at = |i: usize| s[i..i + 8].try_into().ok().map(i64::from_le_bytes);
    let u128_at = |i: usize| s[i..i + 16].try_into().ok().map(u128::from_be_bytes);
    let summary = Summary {
        number: u64_at(0)?,
        records: u64_at(8)?,
        bytes: u64_at(16)?,
        min_at: i64_at(24)?,
        max_at: i64_at(32)?,
        min_key: u128_at(40)?,
        max_key: u128_at(56)?,
    };
    let entries = (body.len() - 8 - (trailer - 4)) as u64;
    (entries == summary.records * INDEX_ENTRY).then_some(summary)
}

/// Where a key's frame is in a sealed segment, found by binary search of its index on disk.
fn search_index(path: &Path, summary: &Summary, key: Key) -> Result<Option<u64>, PdpError> {
    let file = match File::open(path) {
        Ok(file) => file,
        // Retention deleted it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path.display(), e)),
    };
    let (mut low, mut high) = (0u64, summary.records);
    let mut entry = [0u8; INDEX_ENTRY as usize];
    while low < high {
        let middle = low + (high - low) / 2;
        file.read_exact_at(&mut entry, INDEX_MAGIC.len() as u64 + middle * INDEX_ENTRY)
            .map_err(|e| io(path.display(), e))?;
        let (found, offset) = entry.split_at(16);
        let found = u128::from_be_bytes(found.try_into().unwrap_or_default());
        match found.cmp(&key) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
            std::cmp::Ordering::Equal => {
                let offset = u32::from_le_bytes(offset.try_into().unwrap_or_default());
                return Ok(Some(u64::from(offset)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, at: Millis) -> LogRecord {
        LogRecord {
            id: id.into(),
            at,
            action: "authorize".into(),
            caller: "test".into(),
            entry_point: "grpc".into(),
            gateway_id: String::new(),
            merchant_id: format!("m{}", at % 3),
            session_id: String::new(),
            request: serde_json::json!({"room_id": "r1"}),
            allowed: Some(at % 2 == 0),
            rule_ids: vec![],
            warning_rule_ids: vec![],
            enforcement: "NONE".into(),
            policy_version: "v".into(),
            outcome: "ok".into(),
            explanation: None,
            penalty_applied: None,
            warning_issued: false,
            cause_id: String::new(),
            change: String::new(),
            commit: 0,
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect()
    }

    fn fill(log: &SegmentLog, ids: &[String]) {
        for (i, chunk) in ids.chunks(10).enumerate() {
            let records: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(j, id)| record(id, (i * 10 + j) as Millis))
                .collect();
            log.append_blocking(&records)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    fn read_all(log: &SegmentLog, page: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (records, last) = log
                .read(after.as_deref(), |_| true, page, page)
                .unwrap_or_else(|e| panic!("{e}"));
            out.extend(records.into_iter().map(|r| r.id));
            match last {
                Some(last) => after = Some(last),
                None => return out,
            }
        }
    }

    #[test]
    fn records_read_back_in_order_across_sealed_segments_and_after_reopening() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ids = ids(200);
        {
            let log = SegmentLog::open(temp.path(), 4096).unwrap_or_else(|e| panic!("{e}"));
            fill(&log, &ids);
            assert!(log.size().1 > 5, "several segments: {:?}", log.size());
            assert_eq!(read_all(&log, 7), ids);
        }
        let log = SegmentLog::open(temp.path(), 4096).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.records(), 200);
        // Pages of any size, cursors in sealed and active segments alike.
        assert_eq!(read_all(&log, 1), ids);
        assert_eq!(read_all(&log, 64), ids);
        for id in [&ids[0], &ids[57], &ids[199]] {
            let found = log.get(id).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.map(|r| r.id).as_ref(), Some(id));
        }
        let unknown = uuid::Uuid::now_v7().to_string();
        assert!(
            log.get(&unknown)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        // Filters see every record once.
        let (denied, _) = log
            .read(None, |r| r.allowed == Some(false), 1000, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(denied.len(), 100);
    }

    #[test]
    fn the_newest_matches_in_a_time_range_come_newest_first_across_segments() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ids = ids(200);
        let log = SegmentLog::open(temp.path(), 4096).unwrap_or_else(|e| panic!("{e}"));
        fill(&log, &ids);
        let newest = |during, keep: fn(&LogRecord) -> bool, limit, scan| {
            log.newest(during, &[], keep, limit, scan)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let ats = |records: &[LogRecord]| records.iter().map(|r| r.at).collect::<Vec<_>>();
        // Record i is at time i: the latest three of all, then of the denied ones (odd times).
        let (all, cut) = newest(Millis::MIN..=Millis::MAX, |_| true, 3, 1000);
        assert_eq!((ats(&all), cut), (vec![199, 198, 197], false));
        let (denied, _) = newest(0..=Millis::MAX, |r| r.allowed == Some(false), 4, 1000);
        assert_eq!(ats(&denied), vec![199, 197, 195, 193]);
        // A bounded range, across segment boundaries, in full.
        let (range, _) = newest(40..=120, |_| true, 1000, 1000);
        assert_eq!(ats(&range), (40..=120).rev().collect::<Vec<_>>());
        // Segments wholly outside the range are not read: the scan limit is not reached by
        // the 180 records after time 19.
        let (early, cut) = newest(0..=19, |_| true, 1000, 40);
        assert_eq!((early.len(), cut), (20, false));
        // A scan cut short says so and keeps what it found.
        let (partial, cut) = newest(Millis::MIN..=Millis::MAX, |r| r.at < 5, 10, 50);
        assert_eq!((partial.len(), cut), (0, true));
        // A text every match holds skips the rest undecoded, and finds the same records.
        let merchant = |contains: &[&str]| {
            let (found, _) = log
                .newest(
                    Millis::MIN..=Millis::MAX,
                    contains,
                    |r| r.merchant_id == "m2",
                    1000,
                    1000,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            ats(&found)
        };
        let all_m2: Vec<Millis> = (0..200).rev().filter(|at| at % 3 == 2).collect();
        assert_eq!(merchant(&[]), all_m2);
        assert_eq!(merchant(&["m2"]), all_m2);
        assert_eq!(merchant(&["m2", "r1"]), all_m2);
        assert!(merchant(&["m2", "no such text"]).is_empty());
        // Texts are looked for as the encoder escapes them.
        let quoted =
            SegmentLog::open(&temp.path().join("quoted"), 4096).unwrap_or_else(|e| panic!("{e}"));
        let mut odd = record(&ids[0], 1);
        odd.merchant_id = "m\"1\\x".into();
        quoted
            .append_blocking(&[odd])
            .unwrap_or_else(|e| panic!("{e}"));
        let (found, _) = quoted
            .newest(Millis::MIN..=Millis::MAX, &["m\"1\\"], |_| true, 10, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_go_on_after_the_last_whole_record() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ids = ids(30);
        let path = {
            let log = SegmentLog::open(temp.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
            fill(&log, &ids[..20]);
            log.segment_path(1)
        };
        let whole = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // A crash in the middle of an append: half a frame.
        let mut torn = Vec::new();
        encode_frame(&record(&ids[20], 99), &mut torn).unwrap_or_else(|e| panic!("{e}"));
        torn.truncate(torn.len() / 2);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut &file, &torn).unwrap_or_else(|e| panic!("{e}"));
        drop(file);

        let log = SegmentLog::open(temp.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::metadata(&path).map(|m| m.len()).ok(), Some(whole));
        assert_eq!(log.records(), 20);
        fill(&log, &ids[20..]);
        assert_eq!(read_all(&log, 100), ids);
    }

    #[test]
    fn a_flipped_bit_ends_the_segment_at_the_record_before_it() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ids = ids(10);
        let path = {
            let log = SegmentLog::open(temp.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
            fill(&log, &ids);
            log.segment_path(1)
        };
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let last = bytes.len() - 5;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let log = SegmentLog::open(temp.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_all(&log, 100), ids[..9]);
    }

    #[test]
    fn a_sealed_segment_without_its_index_is_indexed_again() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ids = ids(100);
        {
            let log = SegmentLog::open(temp.path(), 4096).unwrap_or_else(|e| panic!("{e}"));
            fill(&log, &ids);
        }
        std::fs::remove_file(index_path(temp.path(), 1)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(index_path(temp.path(), 2), b"APDPIDX1 damaged")
            .unwrap_or_else(|e| panic!("{e}"));
        let log = SegmentLog::open(temp.path(), 4096).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.records(), 100);
        for id in &ids {
            let found = log.get(id).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.map(|r| r.id).as_ref(), Some(id));
        }
    }

    #[test]
    fn a_cursor_retention_took_resumes_at_the_next_later_id() {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ids = ids(100);
        let log = SegmentLog::open(temp.path(), 4096).unwrap_or_else(|e| panic!("{e}"));
        fill(&log, &ids);
        let (deleted, _) = log.prune(35, usize::MAX).unwrap_or_else(|e| panic!("{e}"));
        assert!(deleted > 0);
        let kept = log.records() as usize;
        // The cursor is the oldest record, gone now.
        let (records, _) = log
            .read(Some(&ids[0]), |_| true, 1000, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        let read: Vec<_> = records.into_iter().map(|r| r.id).collect();
        assert_eq!(read, ids[100 - kept..]);
    }
}
