//! Moving a whole store between backends (`readtrack export`, `readtrack import`): every record
//! of every tree, as the layout stores it, through a file.
//!
//! A file rather than a copy from store to store, so that the two stores need not be reachable
//! from one machine, and the copy is a portable backup as well. The records are copied as bytes:
//! both backends store the same keys and values (the byte layout of `schema/store-layout.md`),
//! so the copy needs no decoding and cannot change what it carries. That is also why an export
//! names the schema version it holds, and an import refuses any other.
//!
//! The format, version 1 (integers big-endian):
//!
//! ```text
//! header   "readtrack-export\n"  u32 format (1)  u32 store schema version
//! record   u8 1  u8 tree-name length  tree name  u32 key length  key  u32 value length  value
//! trailer  u8 0  u64 records  u64 FNV-1a 64 of every record's bytes (tag included)
//! ```
//!
//! Every step is checked: an export reads its file back and compares it record by record with
//! the source; an import reads the whole file (count, checksum, tree names) before writing
//! anything, writes in commits of bounded size, then compares the target record by record with
//! the file. Neither runs on a store a service uses: opening the store takes its lock (sled) or
//! its lease (PostgreSQL), which a running service holds.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::pending::{Bounds, Pending, Writes, T, TREE_NAMES};
use super::{Store, StoreError, SCHEMA_VERSION};

const MAGIC: &[u8] = b"readtrack-export\n";
/// The version of the file format (not of the store's layout).
pub const FORMAT_VERSION: u32 = 1;
/// A progress line every this many records.
pub const PROGRESS_EVERY: u64 = 100_000;
const RECORD: u8 = 1;
const TRAILER: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists; an export never overwrites a file")]
    Exists { path: PathBuf },
    #[error("{path} is not a readtrack export (no export header)")]
    NotAnExport { path: PathBuf },
    #[error("{path} is an export of format {found}; this readtrack reads format {FORMAT_VERSION}")]
    Format { path: PathBuf, found: u32 },
    #[error("{path} holds a store of schema version {found}, this readtrack stores version {expected}: import it with the readtrack version that exported it (then let that one upgrade it), or export again with this one")]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path} is damaged or cut short: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("the target store is not empty (tree {tree} has records): import only into a new, empty store")]
    NotEmpty { tree: &'static str },
    #[error("verification failed: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = TransferError> = std::result::Result<T, E>;

/// What a step is doing, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the source and writing the target.
    Copy,
    /// Reading the file before an import writes anything.
    Check,
    /// Comparing the target with the source.
    Verify,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Copy => "copied",
            Phase::Check => "checked",
            Phase::Verify => "verified",
        })
    }
}

/// Records done so far in a phase, reported every [`PROGRESS_EVERY`] records.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    pub tree: &'static str,
    pub records: u64,
}

/// What was copied (and verified): records per tree, in the store's tree order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub trees: Vec<(&'static str, u64)>,
    pub bytes: u64,
}

impl Summary {
    pub fn records(&self) -> u64 {
        self.trees.iter().map(|(_, n)| n).sum()
    }

    fn count(&mut self, tree: &'static str) {
        match self.trees.last_mut() {
            Some((name, n)) if *name == tree => *n += 1,
            _ => self.trees.push((tree, 1)),
        }
    }
}

/// An import commits after this many records or bytes, whichever comes first: memory stays
/// flat however large the store, and no transaction grows without bound.
const COMMIT_RECORDS: usize = 10_000;
const COMMIT_BYTES: usize = 16 << 20;

fn tree_name(tree: T) -> &'static str {
    TREE_NAMES[tree as usize]
}

fn everything() -> Bounds {
    (Bound::Unbounded, Bound::Unbounded)
}

/// Writes every record of `store` to a new file at `to`, then reads the file back and compares
/// it with the store record by record. On any failure the file is removed: a partial export
/// must not be mistaken for a store.
pub fn export(store: &Store, to: &Path, mut progress: impl FnMut(Progress)) -> Result<Summary> {
    // Whatever the open wrote (a schema version, an upgrade) is in the backend before the copy.
    store.flush()?;
    let written = write_export(store, to, &mut progress).and_then(|summary| {
        let mut file = DumpReader::open(to)?;
        let mut verified = compare(store, &mut file, Phase::Verify, &mut progress)?;
        verified.bytes = summary.bytes;
        if verified != summary {
            return Err(TransferError::Mismatch(format!(
                "wrote {:?}, read back {verified:?}",
                summary.trees
            )));
        }
        Ok(summary)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(to);
    }
    written
}

fn write_export(store: &Store, to: &Path, progress: &mut impl FnMut(Progress)) -> Result<Summary> {
    let mut out = DumpWriter::create(to, SCHEMA_VERSION)?;
    let mut summary = Summary::default();
    for tree in T::ALL {
        let name = tree_name(tree);
        for row in store.backend.range(tree, everything(), false) {
            let (key, value) = row?;
            out.record(name, &key, &value)?;
            summary.count(name);
            tick(&summary, Phase::Copy, name, progress);
        }
    }
    summary.bytes = out.finish()?;
    Ok(summary)
}

fn tick(summary: &Summary, phase: Phase, tree: &'static str, progress: &mut impl FnMut(Progress)) {
    let records = summary.records();
    if records % PROGRESS_EVERY == 0 {
        progress(Progress {
            phase,
            tree,
            records,
        });
    }
}

/// Copies the export at `from` into `store`, which must hold no record outside `meta` (a new
/// store: what opening it wrote is all there is). The file is read whole first, so a damaged
/// or foreign file changes nothing; then the records go in, in commits of bounded size; then
/// the store is compared with the file record by record.
///
/// An import that fails half-way leaves a partial store, which a second import refuses as not
/// empty: delete it (the sled folder, or the database's tables) and import again.
pub fn import(store: &Store, from: &Path, mut progress: impl FnMut(Progress)) -> Result<Summary> {
    let checked = check(from, &mut progress)?;
    store.flush()?;
    ensure_empty(store)?;
    // The records go in past the store's write set (below): nothing it remembers holds.
    store.device_cache().clear();
    store.id_cache().clear();
    store.record_cache().clear();

    let mut file = DumpReader::open(from)?;
    let mut pending = Pending::default();
    let mut pending_bytes = 0usize;
    let mut copied = Summary::default();
    while let Some(record) = file.next_record()? {
        let tree = tree_named(from, &record.tree)?;
        let name = tree_name(tree);
        pending_bytes += record.key.len() + record.value.len();
        let mut writes = Writes::default();
        writes.put(tree, &record.key, record.value);
        pending.add(writes);
        copied.count(name);
        tick(&copied, Phase::Copy, name, &mut progress);
        if pending.entries() >= COMMIT_RECORDS || pending_bytes >= COMMIT_BYTES {
            store.backend.apply(&pending)?;
            store.backend.flush()?;
            pending.clear();
            pending_bytes = 0;
        }
    }
    store.backend.apply(&pending)?;
    store.backend.flush()?;
    store.device_cache().clear();
    store.id_cache().clear();
    store.record_cache().clear();

    let mut file = DumpReader::open(from)?;
    let mut verified = compare(store, &mut file, Phase::Verify, &mut progress)?;
    verified.bytes = checked.bytes;
    if verified != checked {
        return Err(TransferError::Mismatch(format!(
            "the file holds {:?}, the store {:?}",
            checked.trees, verified.trees
        )));
    }
    Ok(verified)
}

/// Reads a whole export: its schema is this readtrack's, every tree name is known, trees come
/// in the store's order and keys in ascending order within a tree (so that a comparison in
/// store order is a walk), and the trailer's count and checksum match.
pub fn check(from: &Path, progress: &mut impl FnMut(Progress)) -> Result<Summary> {
    let mut file = DumpReader::open(from)?;
    if file.schema != SCHEMA_VERSION {
        return Err(TransferError::Schema {
            path: from.to_path_buf(),
            found: file.schema,
            expected: SCHEMA_VERSION,
        });
    }
    let mut summary = Summary::default();
    let mut last: Option<(T, Vec<u8>)> = None;
    while let Some(record) = file.next_record()? {
        let tree = tree_named(from, &record.tree)?;
        if let Some((last_tree, last_key)) = &last {
            let in_order = match (*last_tree as usize).cmp(&(tree as usize)) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => *last_key < record.key,
                std::cmp::Ordering::Greater => false,
            };
            if !in_order {
                return Err(TransferError::Damaged {
                    path: from.to_path_buf(),
                    reason: format!(
                        "record {} ({}) is out of order",
                        summary.records() + 1,
                        record.tree
                    ),
                });
            }
        }
        let name = tree_name(tree);
        summary.count(name);
        tick(&summary, Phase::Check, name, progress);
        last = Some((tree, record.key));
    }
    summary.bytes = std::fs::metadata(from)
        .map_err(|source| TransferError::Read {
            path: from.to_path_buf(),
            source,
        })?
        .len();
    Ok(summary)
}

fn tree_named(path: &Path, name: &str) -> Result<T> {
    T::ALL
        .into_iter()
        .find(|t| tree_name(*t) == name)
        .ok_or_else(|| TransferError::Damaged {
            path: path.to_path_buf(),
            reason: format!("it names a tree this readtrack does not have: {name:?}"),
        })
}

/// A store is empty when no tree but `meta` has a record: `meta` holds what opening a store
/// writes (its schema version), and counters.
fn ensure_empty(store: &Store) -> Result<()> {
    for tree in T::ALL.into_iter().filter(|t| *t != T::Meta) {
        if let Some(row) = store.backend.range(tree, everything(), false).next() {
            row?;
            return Err(TransferError::NotEmpty {
                tree: tree_name(tree),
            });
        }
    }
    Ok(())
}

/// Walks the store in tree and key order beside the file, which must hold the same records in
/// the same order and nothing else. Returns what was compared.
fn compare(
    store: &Store,
    file: &mut DumpReader,
    phase: Phase,
    progress: &mut impl FnMut(Progress),
) -> Result<Summary> {
    let mut summary = Summary::default();
    for tree in T::ALL {
        let name = tree_name(tree);
        for row in store.backend.range(tree, everything(), false) {
            let (key, value) = row?;
            let n = summary.records() + 1;
            let Some(record) = file.next_record()? else {
                return Err(TransferError::Mismatch(format!(
                    "the store has more records than the file: record {n} ({name}) is not in it"
                )));
            };
            if record.tree != name || record.key != key.as_ref() {
                return Err(TransferError::Mismatch(format!(
                    "record {n}: the store has {name} key {}, the file {} key {}",
                    hex(&key),
                    record.tree,
                    hex(&record.key)
                )));
            }
            if record.value != value.as_ref() {
                return Err(TransferError::Mismatch(format!(
                    "record {n} ({name} key {}): the values differ",
                    hex(&key)
                )));
            }
            summary.count(name);
            tick(&summary, phase, name, progress);
        }
    }
    if let Some(record) = file.next_record()? {
        return Err(TransferError::Mismatch(format!(
            "the file has more records than the store: record {} ({} key {}) is not in the store",
            summary.records() + 1,
            record.tree,
            hex(&record.key)
        )));
    }
    Ok(summary)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 64 bits: catches a damaged file; not a defence against a forged one (nothing in an
/// export is secret or trusted more than the store it came from).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Writes an export file record by record.
pub(super) struct DumpWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hash: Fnv,
    records: u64,
    bytes: u64,
}

impl DumpWriter {
    /// Creates `path` (never over an existing file) and writes the header.
    pub(super) fn create(path: &Path, schema: u32) -> Result<DumpWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => TransferError::Exists {
                    path: path.to_path_buf(),
                },
                _ => TransferError::Write {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let mut w = DumpWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Fnv::new(),
            records: 0,
            bytes: 0,
        };
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        header.extend_from_slice(&schema.to_be_bytes());
        w.raw(&header)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.bytes += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|source| TransferError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn hashed(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.raw(bytes)
    }

    pub(super) fn record(&mut self, tree: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let name = u8::try_from(tree.len()).expect("tree names are short");
        self.hashed(&[RECORD, name])?;
        self.hashed(tree.as_bytes())?;
        self.hashed(&len32(key.len()).to_be_bytes())?;
        self.hashed(key)?;
        self.hashed(&len32(value.len()).to_be_bytes())?;
        self.hashed(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and makes the file durable; returns its size in bytes.
    pub(super) fn finish(mut self) -> Result<u64> {
        let mut trailer = vec![TRAILER];
        trailer.extend_from_slice(&self.records.to_be_bytes());
        trailer.extend_from_slice(&self.hash.0.to_be_bytes());
        self.raw(&trailer)?;
        let path = self.path.clone();
        let write = |source| TransferError::Write {
            path: path.clone(),
            source,
        };
        let file = self.out.into_inner().map_err(|e| write(e.into_error()))?;
        file.sync_all().map_err(write)?;
        Ok(self.bytes)
    }
}

fn len32(len: usize) -> u32 {
    // A record over 4 GiB cannot exist: stanzas are bounded far below that (`max_stanza_bytes`).
    u32::try_from(len).expect("a record over 4 GiB")
}

/// One record read back from an export.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DumpRecord {
    pub tree: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Reads an export file record by record; the trailer is checked when the records end, so a
/// caller learns of damage only at the end: [`check`] reads a whole file before an import.
pub(super) struct DumpReader {
    path: PathBuf,
    input: BufReader<File>,
    pub(super) schema: u32,
    hash: Fnv,
    records: u64,
    done: bool,
}

impl DumpReader {
    pub(super) fn open(path: &Path) -> Result<DumpReader> {
        let file = File::open(path).map_err(|source| TransferError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = DumpReader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, file),
            schema: 0,
            hash: Fnv::new(),
            records: 0,
            done: false,
        };
        let mut magic = [0u8; MAGIC.len()];
        if r.fill(&mut magic).is_err() || magic != MAGIC {
            return Err(TransferError::NotAnExport {
                path: path.to_path_buf(),
            });
        }
        let format = r.u32()?;
        if format != FORMAT_VERSION {
            return Err(TransferError::Format {
                path: path.to_path_buf(),
                found: format,
            });
        }
        r.schema = r.u32()?;
        Ok(r)
    }

    fn damaged(&self, reason: impl Into<String>) -> TransferError {
        TransferError::Damaged {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.damaged(format!(
                "the file ends inside record {} (no trailer)",
                self.records + 1
            )),
            _ => TransferError::Read {
                path: self.path.clone(),
                source: e,
            },
        })
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn hashed(&mut self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf)?;
        self.hash.update(&buf);
        Ok(buf)
    }

    /// The next record, `None` after a trailer that matches what was read.
    pub(super) fn next_record(&mut self) -> Result<Option<DumpRecord>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.fill(&mut tag)?;
        match tag[0] {
            TRAILER => {
                let records = self.u64()?;
                let hash = self.u64()?;
                if records != self.records {
                    return Err(self.damaged(format!(
                        "the trailer counts {records} records, the file holds {}",
                        self.records
                    )));
                }
                if hash != self.hash.0 {
                    return Err(self.damaged("the checksum does not match the records"));
                }
                let mut rest = [0u8; 1];
                match self.input.read(&mut rest) {
                    Ok(0) => {}
                    Ok(_) => return Err(self.damaged("bytes after the trailer")),
                    Err(source) => {
                        return Err(TransferError::Read {
                            path: self.path.clone(),
                            source,
                        })
                    }
                }
                self.done = true;
                Ok(None)
            }
            RECORD => {
                self.hash.update(&tag);
                let name_len = self.hashed(1)?[0] as usize;
                let name = self.hashed(name_len)?;
                let tree = String::from_utf8(name)
                    .map_err(|_| self.damaged("a tree name is not UTF-8"))?;
                let key_len = u32::from_be_bytes(self.hashed(4)?.try_into().unwrap());
                let key = self.hashed(key_len as usize)?;
                let value_len = u32::from_be_bytes(self.hashed(4)?.try_into().unwrap());
                let value = self.hashed(value_len as usize)?;
                self.records += 1;
                Ok(Some(DumpRecord { tree, key, value }))
            }
            other => Err(self.damaged(format!(
                "record {} starts with tag {other}",
                self.records + 1
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(path: &Path) {
        let mut w = DumpWriter::create(path, 5).unwrap();
        w.record("meta", b"schema", &5u32.to_be_bytes()).unwrap();
        w.record("userseq_message", &[0, 1, 2], b"value").unwrap();
        w.record("userseq_message", &[0, 1, 3], b"").unwrap();
        w.finish().unwrap();
    }

    fn read_all(path: &Path) -> Result<Vec<DumpRecord>> {
        let mut r = DumpReader::open(path)?;
        let mut out = Vec::new();
        while let Some(record) = r.next_record()? {
            out.push(record);
        }
        Ok(out)
    }

    #[test]
    fn a_written_export_reads_back_record_for_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.export");
        write_sample(&path);
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].tree, "userseq_message");
        assert_eq!(records[1].key, vec![0, 1, 2]);
        assert_eq!(records[1].value, b"value".to_vec());
        assert_eq!(records[2].value, Vec::<u8>::new());
        assert_eq!(DumpReader::open(&path).unwrap().schema, 5);
    }

    #[test]
    fn an_export_never_overwrites_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.export");
        std::fs::write(&path, b"precious").unwrap();
        let err = DumpWriter::create(&path, 5).err().unwrap();
        assert!(matches!(err, TransferError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn a_file_cut_anywhere_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.export");
        write_sample(&path);
        let whole = std::fs::read(&path).unwrap();
        let header = MAGIC.len() + 8;
        for cut in header..whole.len() {
            let short = dir.path().join("short");
            std::fs::write(&short, &whole[..cut]).unwrap();
            let err = read_all(&short).unwrap_err();
            assert!(
                matches!(err, TransferError::Damaged { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_in_a_record_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.export");
        write_sample(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        // The last byte of the value "value" in the second record.
        let at = bytes.windows(5).position(|w| w == b"value").unwrap() + 4;
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_all(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is damaged or cut short: the checksum does not match the records",
                path.display()
            )
        );
    }

    #[test]
    fn a_file_that_is_not_an_export_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("readtrack.toml");
        std::fs::write(&path, "[xmpp]\ndomain = \"example.com\"\n").unwrap();
        let err = DumpReader::open(&path).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a readtrack export (no export header)",
                path.display()
            )
        );
    }
}
