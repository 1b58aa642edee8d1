//! The engine's own parallel pipelines for VM disks: backup into and restore out of the
//! restic format ([`crate::format`]), using both cores for every disk.
//!
//! **Backup.** [`WORKERS`]` + 1` workers (one more than the cores, so that a worker waiting
//! for the disk leaves the cores to the others) claim the disks' [`DISK_CHUNK_SIZE`] pieces in
//! order. A piece the image marks unallocated is not read (it is the all-zero blob, whose id is
//! known); the others are read with `pread`, hashed (SHA-256, the blob id), dropped if the
//! vault or this backup already holds them, else compressed (zstd at the repository's level,
//! [`DISK_ZSTD_LEVEL`] when it asks for the default) and encrypted into the current pack. The
//! compressed blob is not decompressed again to compare (rustic_core's `extra_verify`, which
//! the repository config turns on by default, is not applied here; it cost ≈0.16 CPU-seconds
//! for the benchmark's 1 GiB image): restic does not do it either, and every restore and every `verify` that reads
//! data checks each blob's SHA-256 against its id, so a faulty compression cannot reach a
//! restored disk unnoticed. The price: such a fault would be found at restore or verify time,
//! not at backup time. Full packs go through
//! a one-slot channel to a writer thread that writes them by the storage rules of
//! [`crate::backend`] (with direct I/O; on an object store, [`REMOTE_WRITERS`] threads, each
//! one PUT in flight). Memory is bounded: one read buffer and one scratch
//! buffer per worker, one pack being filled, one queued, one being written (plus one kept for
//! reuse). A disk whose size and modification time equal its node in the parent recovery point
//! is not read at all: its content list is reused. Only after every pack is written are the
//! index, the tree (the root tree holding one file node per disk) and last the snapshot
//! written; a cancel, an error or a crash before that leaves orphan packs only, never a
//! recovery point.
//!
//! **Restore.** The blobs a disk needs are grouped by pack and read in ranges (up to
//! [`RANGE_MAX`], with direct I/O) by [`RESTORE_WORKERS`] workers, which check the MAC,
//! decrypt, decompress, check the SHA-256 against the content id the snapshot names (so the
//! bytes written are verified in memory, without a second pass over the image), and `pwrite`
//! them at every offset that holds that blob (raw targets: direct I/O for aligned chunks, the
//! page cache with writeback started at once for the rest). All-zero chunks are not written
//! (holes).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rustic_core::repofile::{BlobType, Metadata, Node, NodeType, SnapshotFile, SnapshotSummary, Tree};
use rustic_core::{FileType, Id};

use crate::backend::{Abort, GateBackend, VaultBackend, DISK_CHUNK_SIZE};
use crate::disk::{ImageFormat, ImageReader, ImageWriter, ReadStats};
use crate::error::{EngineError, IoContext, Result};
use crate::format::{
    encode_file, id_bytes, open_blob, repo_err, sha256, write_file, BlobIndex, BlobLoc, Crypto, Hash, IndexWriter,
    PackBuilder, CRYPTO_OVERHEAD,
};
use crate::iobuf::AlignedBuf;
use crate::progress::{Cancel, Counters};

/// Worker threads for hashing/compression/encryption (backup) and decryption (restore).
pub(crate) const WORKERS: usize = 2;
/// zstd level for disk images when the repository asks for the default (a level set in the
/// repository's config is used as is). Level 1 compresses typical disk content (binaries, text,
/// filesystem metadata) within a few per cent of level 3 at about twice the speed, and disk
/// backups are throughput-bound.
pub(crate) const DISK_ZSTD_LEVEL: i32 = 1;
/// Default target size of a data pack written by the pipeline (restic's).
pub(crate) const DISK_PACK_SIZE: usize = 16 * 1024 * 1024;
/// Restore workers: a restore waits mostly for the device (reading packs, writing the image
/// with direct I/O), so it keeps more requests in flight than there are cores.
const RESTORE_WORKERS: usize = 2 * WORKERS + 1;
/// Largest pack range a restore worker reads at once.
const RANGE_MAX: u32 = 16 * 1024 * 1024;
/// A gap between needed blobs of a pack larger than this starts a new read.
const GAP_MAX: u32 = 1024 * 1024;

/// How the pipeline writes: through which backend, with which key and settings.
pub(crate) struct Writer<'a> {
    /// The gated backend (refuses writes once cancelled, and the snapshot once aborted).
    pub be: &'a GateBackend,
    pub crypto: &'a Crypto,
    /// zstd level (`None`: repository version 1, no compression).
    pub zstd: Option<i32>,
    /// Target size of a data pack.
    pub pack_size: usize,
}

impl<'a> Writer<'a> {
    /// The writer a repository's config asks for: its zstd level ([`DISK_ZSTD_LEVEL`] for its
    /// default), and restic's 16 MiB packs unless it sets its own size (rustic_core's default grows
    /// to 32 MiB and more; with direct I/O, smaller packs cost nothing and keep the pipelines'
    /// memory down).
    pub(crate) fn for_repo(
        be: &'a GateBackend,
        crypto: &'a Crypto,
        config: &rustic_core::repofile::ConfigFile,
    ) -> Result<Self> {
        Ok(Writer {
            be,
            crypto,
            zstd: config
                .zstd()?
                .map(|level| if level == 0 { DISK_ZSTD_LEVEL } else { level }),
            pack_size: config.datapack_size.map_or(DISK_PACK_SIZE, |s| s as usize),
        })
    }
}

/// One disk to back up.
pub(crate) struct DiskJob {
    pub name: String,
    /// The source's path (for messages).
    pub path: PathBuf,
    /// The point-in-time view to read.
    pub source: ChunkSource,
    pub size: u64,
    pub mtime: Option<rustic_core::jiff::Timestamp>,
    /// Changed-block tracking: `Some(dirty)` reads only the chunks marked dirty; every other
    /// chunk is the parent recovery point's chunk at the same index (the parent's file node of
    /// the same name and size, its blob in the vault; otherwise the chunk is read after all).
    pub unchanged: Option<Vec<bool>>,
}

/// Where a disk's point-in-time view is read from.
pub(crate) enum ChunkSource {
    /// An image file (a reflink clone or the guarded source), opened, and its format.
    Image(std::fs::File, ImageFormat),
    /// An NBD export of a running guest's disk view ([`crate::livevm`]).
    Nbd(std::sync::Arc<crate::nbd::NbdReader>),
}

/// An opened [`ChunkSource`].
enum Reader {
    Image(ImageReader),
    Nbd(std::sync::Arc<crate::nbd::NbdReader>),
}

impl Reader {
    fn is_unallocated(&self, off: u64, len: u64) -> std::io::Result<bool> {
        match self {
            Reader::Image(r) => r.is_unallocated(off, len),
            Reader::Nbd(r) => r.is_zero(off, len).map_err(std::io::Error::other),
        }
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        match self {
            Reader::Image(r) => r.read_at(buf, off),
            Reader::Nbd(r) => r.read_at(buf, off).map_err(std::io::Error::other),
        }
    }
}

#[derive(Default)]
struct Added {
    blobs: AtomicU64,
    plain: AtomicU64,
    stored: AtomicU64,
}

/// First error wins; every thread stops at the next chance.
#[derive(Default)]
pub(crate) struct Failure {
    err: Mutex<Option<EngineError>>,
    stop: AtomicBool,
}

impl Failure {
    pub(crate) fn set(&self, e: EngineError) {
        let mut g = self.err.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    pub(crate) fn take(self) -> Option<EngineError> {
        self.err.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-worker compression state.
pub(crate) struct Sealer<'a> {
    w: &'a Writer<'a>,
    cctx: Option<zstd::bulk::Compressor<'static>>,
    pub(crate) scratch: Vec<u8>,
}

impl<'a> Sealer<'a> {
    pub(crate) fn new(w: &'a Writer<'a>) -> Result<Self> {
        let z = |e: std::io::Error| repo_err(format!("zstd: {e}"));
        Ok(Self {
            w,
            cctx: w.zstd.map(zstd::bulk::Compressor::new).transpose().map_err(z)?,
            scratch: Vec::new(),
        })
    }

    /// Compresses (if it helps) and encrypts `data` into `self.scratch[..n]`; returns `n` and
    /// the plain length if compressed.
    pub(crate) fn seal(&mut self, data: &[u8]) -> Result<(usize, Option<u32>)> {
        if let Some(c) = &mut self.cctx {
            let bound = zstd::zstd_safe::compress_bound(data.len());
            if self.scratch.len() < bound + CRYPTO_OVERHEAD {
                self.scratch.resize(bound + CRYPTO_OVERHEAD, 0);
            }
            let n = c
                .compress_to_buffer(data, &mut self.scratch[16..16 + bound])
                .map_err(|e| repo_err(format!("compressing: {e}")))?;
            if n < data.len() {
                let stored = self.w.crypto.seal_in_place(&mut self.scratch, n)?;
                return Ok((stored, Some(data.len() as u32)));
            }
        }
        if self.scratch.len() < data.len() + CRYPTO_OVERHEAD {
            self.scratch.resize(data.len() + CRYPTO_OVERHEAD, 0);
        }
        self.scratch[16..16 + data.len()].copy_from_slice(data);
        Ok((self.w.crypto.seal_in_place(&mut self.scratch, data.len())?, None))
    }
}

/// Pack uploads in flight at once to an object store.
pub(crate) const REMOTE_WRITERS: usize = 4;

/// Writes one finished pack (direct I/O); returns its size and its buffer for reuse.
pub(crate) fn write_pack(w: &Writer, index: &Mutex<IndexWriter>, pack: PackBuilder) -> Result<(u64, AlignedBuf)> {
    let (bytes, id, blobs) = pack.finish(w.crypto)?;
    let n = bytes.len() as u64;
    w.be.write_aligned(FileType::Pack, &Id::new(id), &bytes)?;
    index.lock().unwrap_or_else(|p| p.into_inner()).add(id, &blobs);
    Ok((n, bytes))
}

/// Backs up `jobs` and commits the snapshot `snap` (see the module doc). `parent` is the parent
/// recovery point's snapshot id and root tree.
// `Metadata` is non-exhaustive: no struct literal possible.
#[allow(clippy::too_many_arguments, clippy::field_reassign_with_default)]
pub(crate) fn backup(
    w: &Writer,
    index: &BlobIndex,
    parent: Option<(rustic_core::repofile::SnapshotId, Tree)>,
    jobs: &[DiskJob],
    mut snap: SnapshotFile,
    cancel: &Cancel,
    abort: &Abort,
    stats: &ReadStats,
    counters: &Counters,
) -> Result<SnapshotFile> {
    let start = rustic_core::jiff::Zoned::now();
    let parent_nodes: HashMap<String, Node> = parent
        .as_ref()
        .map(|(_, t)| {
            t.nodes
                .iter()
                .map(|n| (n.name().to_string_lossy().into_owned(), n.clone()))
                .collect()
        })
        .unwrap_or_default();

    // Disks unchanged since the parent are not read.
    let mut reused: Vec<Option<Vec<rustic_core::DataId>>> = Vec::with_capacity(jobs.len());
    let (mut new_files, mut changed_files, mut unmodified_files) = (0u64, 0u64, 0u64);
    for j in jobs {
        let p = parent_nodes.get(&j.name);
        let same = p.and_then(|p| {
            let content = p.content.as_ref()?;
            (p.node_type == NodeType::File
                && p.meta.size == j.size
                && p.meta.mtime.is_some()
                && p.meta.mtime == j.mtime
                && content
                    .iter()
                    .all(|id| index.data.contains_key(&id_bytes(&id.into_inner()))))
            .then(|| content.clone())
        });
        match (p, &same) {
            (None, _) => new_files += 1,
            (Some(_), None) => changed_files += 1,
            (Some(_), Some(_)) => unmodified_files += 1,
        }
        if same.is_some() {
            counters.add(j.size);
        }
        reused.push(same);
    }

    let chunk = DISK_CHUNK_SIZE as u64;
    // Changed-block tracking: the parent's chunk ids of each job that reads only dirty chunks
    // (a parent node of the same size whose every chunk the vault holds).
    let clean_from: Vec<Option<Vec<Hash>>> = jobs
        .iter()
        .map(|j| {
            j.unchanged.as_ref()?;
            let p = parent_nodes.get(&j.name)?;
            let c = p.content.as_ref()?;
            let ids: Vec<Hash> = c.iter().map(|id| id_bytes(&id.into_inner())).collect();
            (p.node_type == NodeType::File
                && p.meta.size == j.size
                && ids.len() as u64 == j.size.div_ceil(chunk)
                && ids.iter().all(|h| index.data.contains_key(h)))
            .then_some(ids)
        })
        .collect();
    let content: Mutex<Vec<Vec<Hash>>> = Mutex::new(
        jobs.iter()
            .zip(&reused)
            .map(|(j, r)| {
                if r.is_some() {
                    Vec::new()
                } else {
                    vec![[0u8; 32]; j.size.div_ceil(chunk) as usize]
                }
            })
            .collect(),
    );
    let seen: Mutex<HashSet<Hash>> = Mutex::default();
    let zero_ids: Mutex<HashMap<usize, Hash>> = Mutex::default();
    let zero_id = |len: usize| -> Hash {
        *zero_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(len)
            .or_insert_with(|| sha256(&vec![0u8; len]))
    };
    // A pack overflows its target by at most one blob, plus its header.
    let pack_cap = w.pack_size + DISK_CHUNK_SIZE + 256 * 1024;
    let packer = Mutex::new(PackBuilder::new(AlignedBuf::with_capacity(pack_cap)));
    // Buffers of written packs, reused for new ones (no fresh pages to fault in per pack).
    let spare: Mutex<Vec<AlignedBuf>> = Mutex::default();
    let index_out = Mutex::new(IndexWriter::default());
    let added = Added::default();
    let packed_total = AtomicU64::new(0);
    let fail = Failure::default();

    let (pack_tx, pack_rx) = crossbeam_channel::bounded::<PackBuilder>(1);

    // The disks to read, opened once; every worker claims the next chunk of the sequence.
    let mut readers = Vec::with_capacity(jobs.len());
    let mut todo: Vec<(usize, usize)> = Vec::new(); // (job, number of chunks)
    for (j, job) in jobs.iter().enumerate() {
        if reused[j].is_none() {
            readers.push(Some(match &job.source {
                ChunkSource::Image(f, format) => {
                    let f = f.try_clone().ctx(|| format!("dup {}", job.path.display()))?;
                    Reader::Image(ImageReader::from_file(f, &job.path, *format)?)
                }
                ChunkSource::Nbd(r) => Reader::Nbd(r.clone()),
            }));
            todo.push((j, job.size.div_ceil(chunk) as usize));
        } else {
            readers.push(None);
        }
    }
    let cursor: Mutex<(usize, usize)> = Mutex::new((0, 0)); // (position in todo, chunk)
    let next_chunk = || -> Option<(usize, usize)> {
        let mut c = cursor.lock().unwrap_or_else(|p| p.into_inner());
        while c.0 < todo.len() && c.1 >= todo[c.0].1 {
            *c = (c.0 + 1, 0);
        }
        let (t, i) = *c;
        c.1 += 1;
        (t < todo.len()).then(|| (todo[t].0, i))
    };

    std::thread::scope(|s| {
        // One writer for a local directory (direct I/O keeps the disk busy); several uploads in
        // flight for an object store, where each PUT waits on the network.
        let writers: Vec<_> = (0..if w.be.is_remote() { REMOTE_WRITERS } else { 1 })
            .map(|_| {
                let pack_rx = pack_rx.clone();
                let (fail, index_out, packed_total, spare) = (&fail, &index_out, &packed_total, &spare);
                s.spawn(move || {
                    for pack in pack_rx {
                        if fail.stopped() {
                            continue;
                        }
                        match write_pack(w, index_out, pack) {
                            Ok((n, buf)) => {
                                packed_total.fetch_add(n, Ordering::Relaxed);
                                let mut sp = spare.lock().unwrap_or_else(|p| p.into_inner());
                                if sp.len() < 2 {
                                    sp.push(buf);
                                }
                            }
                            Err(e) => fail.set(e),
                        }
                    }
                })
            })
            .collect();
        drop(pack_rx);
        let mut workers = Vec::new();
        // One more than the cores: a worker waiting for the disk leaves the cores to the others.
        for _ in 0..WORKERS + 1 {
            let pack_tx = pack_tx.clone();
            let clean_from = &clean_from;
            let (seen, content, packer, added, fail, zero_id, spare, next_chunk, readers) = (
                &seen,
                &content,
                &packer,
                &added,
                &fail,
                &zero_id,
                &spare,
                &next_chunk,
                &readers,
            );
            workers.push(s.spawn(move || {
                let mut sealer = match Sealer::new(w) {
                    Ok(s) => s,
                    Err(e) => return fail.set(e),
                };
                let mut buf = Vec::new();
                let mut zeros = Vec::new();
                while let Some((j, idx)) = next_chunk() {
                    if fail.stopped() {
                        return;
                    }
                    if cancel.is_cancelled() {
                        return fail.set(EngineError::Cancelled);
                    }
                    let job = &jobs[j];
                    let off = idx as u64 * chunk;
                    let len = (job.size - off).min(chunk) as usize;
                    // A chunk the dirty bitmap leaves clean is the parent's: not read.
                    if let (Some(ids), Some(dirty)) = (&clean_from[j], &job.unchanged) {
                        if !dirty.get(idx).copied().unwrap_or(true) {
                            content.lock().unwrap_or_else(|p| p.into_inner())[j][idx] = ids[idx];
                            stats.reused.fetch_add(len as u64, Ordering::Relaxed);
                            counters.add(len as u64);
                            continue;
                        }
                    }
                    let r = (|| -> Result<()> {
                        let source_err = |e: std::io::Error| {
                            let why = format!("reading disk {}: {e}", job.path.display());
                            abort.set(why.clone());
                            EngineError::Source {
                                path: job.path.clone(),
                                reason: why,
                            }
                        };
                        let img = readers[j].as_ref().expect("opened above");
                        stats.scanned.fetch_add(len as u64, Ordering::Relaxed);
                        // An unallocated piece is all zeros: not read, its id known.
                        let (id, data): (Hash, &[u8]) = if img.is_unallocated(off, len as u64).map_err(source_err)? {
                            stats.skipped.fetch_add(len as u64, Ordering::Relaxed);
                            (zero_id(len), &[])
                        } else {
                            buf.resize(len, 0);
                            img.read_at(&mut buf, off).map_err(source_err)?;
                            (sha256(&buf), &buf)
                        };
                        let new =
                            !index.data.contains_key(&id) && seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                        if new {
                            let data = if data.len() == len {
                                data
                            } else {
                                zeros.resize(len, 0);
                                &zeros[..]
                            };
                            let (n, plain) = sealer.seal(data)?;
                            added.blobs.fetch_add(1, Ordering::Relaxed);
                            added.plain.fetch_add(len as u64, Ordering::Relaxed);
                            added.stored.fetch_add(n as u64, Ordering::Relaxed);
                            let full = {
                                let mut p = packer.lock().unwrap_or_else(|p| p.into_inner());
                                p.add(id, BlobType::Data, &sealer.scratch[..n], plain);
                                (p.data.len() >= w.pack_size).then(|| {
                                    let buf = spare
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .pop()
                                        .unwrap_or_else(|| AlignedBuf::with_capacity(pack_cap));
                                    std::mem::replace(&mut *p, PackBuilder::new(buf))
                                })
                            };
                            if let Some(full) = full {
                                pack_tx.send(full).map_err(|_| repo_err("pack writer stopped"))?;
                            }
                        }
                        content.lock().unwrap_or_else(|p| p.into_inner())[j][idx] = id;
                        counters.add(len as u64);
                        Ok(())
                    })();
                    if let Err(e) = r {
                        return fail.set(e);
                    }
                }
            }));
        }
        for h in workers {
            if h.join().is_err() {
                fail.set(repo_err("a backup worker panicked"));
            }
        }
        let last = std::mem::replace(
            &mut *packer.lock().unwrap_or_else(|p| p.into_inner()),
            PackBuilder::new(AlignedBuf::with_capacity(0)),
        );
        if !last.is_empty() && !fail.stopped() {
            let _ = pack_tx.send(last);
        }
        drop(pack_tx);
        if writers.into_iter().any(|h| h.join().is_err()) {
            fail.set(repo_err("the pack writer panicked"));
        }
    });
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    if let Some(e) = fail.take() {
        return Err(e);
    }

    // The root tree: one file node per disk, sorted by name.
    let content = content.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut nodes = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter().enumerate() {
        let mut meta = Metadata::default();
        meta.size = job.size;
        meta.mode = Some(0o100_600);
        meta.mtime = job.mtime;
        let mut node = Node::new_node(job.name.as_ref(), NodeType::File, meta);
        node.content = Some(match &reused[j] {
            Some(c) => c.clone(),
            None => content[j].iter().map(|h| Id::new(*h).into()).collect(),
        });
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.name().cmp(&b.name()));
    let tree = Tree { nodes };
    let (tree_json, tree_id) = tree.serialize().map_err(|e| repo_err(format!("tree: {e}")))?;
    let tree_hash = id_bytes(&tree_id.into_inner());
    let mut index_out = index_out.into_inner().unwrap_or_else(|p| p.into_inner());
    let (mut tree_blobs, mut tree_plain, mut tree_stored) = (0u64, 0u64, 0u64);
    if !index.tree.contains_key(&tree_hash) {
        let mut sealer = Sealer::new(w)?;
        let (n, plain) = sealer.seal(&tree_json)?;
        let mut p = PackBuilder::new(AlignedBuf::with_capacity(n + 4096));
        p.add(tree_hash, BlobType::Tree, &sealer.scratch[..n], plain);
        let m = Mutex::new(index_out);
        write_pack(w, &m, p)?;
        index_out = m.into_inner().unwrap_or_else(|p| p.into_inner());
        (tree_blobs, tree_plain, tree_stored) = (1, tree_json.len() as u64, n as u64);
    }
    index_out.write(w.be, w.crypto, w.zstd)?;

    // The snapshot: the commit.
    let mut sum = snap.summary.take().unwrap_or_default();
    fill_summary(&mut sum, jobs, &added, (new_files, changed_files, unmodified_files));
    let parent_tree_same = parent.as_ref().is_some_and(|(_, t)| {
        t.serialize()
            .map(|(_, id)| id_bytes(&id.into_inner()) == tree_hash)
            .unwrap_or(false)
    });
    sum.total_dirs_processed = 1;
    match (&parent, parent_tree_same) {
        (None, _) => sum.dirs_new = 1,
        (Some(_), true) => sum.dirs_unmodified = 1,
        (Some(_), false) => sum.dirs_changed = 1,
    }
    sum.tree_blobs = tree_blobs;
    sum.data_added_trees = tree_plain;
    sum.data_added_trees_packed = tree_stored;
    sum.data_added += tree_plain;
    sum.data_added_packed += tree_stored;
    sum.backup_start = start;
    let end = rustic_core::jiff::Zoned::now();
    sum.backup_duration = secs_between(&sum.backup_start, &end);
    sum.total_duration = secs_between(&snap.time, &end);
    sum.backup_end = end;
    snap.summary = Some(sum);
    snap.tree = tree_id;
    for j in jobs {
        snap.paths.add(j.name.clone());
    }
    if let Some((pid, _)) = &parent {
        snap.parent = Some(*pid);
        snap.parents = vec![*pid];
    }
    snap.id = Default::default();
    let json = serde_json::to_vec(&snap).map_err(|e| repo_err(format!("serializing snapshot: {e}")))?;
    let id = write_file(w.be, FileType::Snapshot, encode_file(w.crypto, &json, w.zstd)?)?;
    snap.id = id.into();
    Ok(snap)
}

pub(crate) fn secs_between(a: &rustic_core::jiff::Zoned, b: &rustic_core::jiff::Zoned) -> f64 {
    (b.timestamp().as_nanosecond() - a.timestamp().as_nanosecond()) as f64 / 1e9
}

fn fill_summary(sum: &mut SnapshotSummary, jobs: &[DiskJob], added: &Added, files: (u64, u64, u64)) {
    sum.files_new = files.0;
    sum.files_changed = files.1;
    sum.files_unmodified = files.2;
    sum.total_files_processed = jobs.len() as u64;
    sum.total_bytes_processed = jobs.iter().map(|j| j.size).sum();
    sum.data_blobs = added.blobs.load(Ordering::Relaxed);
    sum.data_added_files = added.plain.load(Ordering::Relaxed);
    sum.data_added_files_packed = added.stored.load(Ordering::Relaxed);
    sum.data_added = sum.data_added_files;
    sum.data_added_packed = sum.data_added_files_packed;
}

/// One restore target: an image being written and the chunks it needs.
pub(crate) struct Target<'a> {
    pub writer: &'a ImageWriter,
    /// (offset, length, content id) of every chunk, in order.
    pub chunks: &'a [(u64, usize, Hash)],
    /// The final path (for error messages).
    pub path: &'a Path,
}

/// A blob a restore needs.
struct Needed {
    id: Hash,
    loc: BlobLoc,
    /// Plain length.
    len: usize,
    /// Where it goes: (target, offset), one entry per chunk holding it.
    dst: Vec<(usize, u64)>,
}

/// A range of one pack, read at once.
struct Range {
    pack: Hash,
    start: u32,
    end: u32,
    blobs: Vec<Needed>,
}

/// Writes every non-zero chunk of `targets` from the vault, each verified against its id before
/// it is written (see the module doc). `done` counts restored bytes, `verified` the bytes
/// checked against the snapshot (all-zero chunks are checked by their id alone).
pub(crate) fn restore(
    be: &VaultBackend,
    crypto: &Crypto,
    index: &BlobIndex,
    targets: &[Target],
    cancel: &Cancel,
    done: &Counters,
    verified: &Counters,
) -> Result<()> {
    let mut zero_ids: HashMap<usize, Hash> = HashMap::new();
    let mut wanted: HashMap<Hash, Needed> = HashMap::new();
    for (t, target) in targets.iter().enumerate() {
        for (off, len, id) in target.chunks {
            let zero = *zero_ids.entry(*len).or_insert_with(|| sha256(&vec![0u8; *len]));
            if *id == zero {
                done.add(*len as u64);
                verified.add(*len as u64);
                continue;
            }
            let loc = index
                .data
                .get(id)
                .ok_or_else(|| repo_err(format!("blob {} is not in the index", Id::new(*id).to_hex().as_str())))?;
            wanted
                .entry(*id)
                .or_insert_with(|| Needed {
                    id: *id,
                    loc: *loc,
                    len: *len,
                    dst: Vec::new(),
                })
                .dst
                .push((t, *off));
        }
    }
    let mut by_pack: HashMap<Hash, Vec<Needed>> = HashMap::new();
    for n in wanted.into_values() {
        by_pack.entry(n.loc.pack).or_default().push(n);
    }
    let mut ranges: Vec<Range> = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|b| b.loc.offset);
        let mut cur: Option<Range> = None;
        for b in blobs {
            let (o, e) = (b.loc.offset, b.loc.offset + b.loc.length);
            if let Some(r) = &mut cur {
                if o >= r.end && o - r.end <= GAP_MAX && e - r.start <= RANGE_MAX {
                    r.end = e;
                    r.blobs.push(b);
                    continue;
                }
                ranges.extend(cur.take());
            }
            cur = Some(Range {
                pack,
                start: o,
                end: e,
                blobs: vec![b],
            });
        }
        ranges.extend(cur);
    }
    // Roughly in image order, so the page cache and the disk see mostly sequential writes.
    ranges.sort_by_key(|r| r.blobs.iter().flat_map(|b| b.dst.iter().copied()).min());

    let next = AtomicUsize::new(0);
    let fail = Failure::default();
    std::thread::scope(|s| {
        for _ in 0..RESTORE_WORKERS {
            s.spawn(|| {
                let mut dctx = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => return fail.set(repo_err(format!("zstd: {e}"))),
                };
                let mut buf = AlignedBuf::with_capacity(0);
                let mut plain = AlignedBuf::with_capacity(0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ranges.len() || fail.stopped() {
                        return;
                    }
                    if cancel.is_cancelled() {
                        return fail.set(EngineError::Cancelled);
                    }
                    if let Err(e) = restore_range(
                        be, crypto, &ranges[i], targets, &mut dctx, &mut buf, &mut plain, done, verified,
                    ) {
                        return fail.set(e);
                    }
                }
            });
        }
    });
    match fail.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn restore_range(
    be: &VaultBackend,
    crypto: &Crypto,
    r: &Range,
    targets: &[Target],
    dctx: &mut zstd::bulk::Decompressor<'static>,
    buf: &mut AlignedBuf,
    plain: &mut AlignedBuf,
    done: &Counters,
    verified: &Counters,
) -> Result<()> {
    let skip = be.read_pack_direct(&Id::new(r.pack), r.start, r.end - r.start, buf)?;
    for Needed { id, loc, len, dst } in &r.blobs {
        let first = &targets[dst[0].0];
        let bad = |reason: String| EngineError::VerificationFailed {
            path: first.path.to_path_buf(),
            reason,
        };
        let at = skip + (loc.offset - r.start) as usize;
        let stored = &mut buf.as_mut_slice()[at..at + loc.length as usize];
        let range = crypto
            .open_in_place(stored)
            .map_err(|e| bad(format!("vault blob {}: {e}", Id::new(*id).to_hex().as_str())))?;
        // The plain bytes go to an aligned buffer, so they can be written with direct I/O.
        match loc.uncompressed {
            None => {
                plain.clear();
                plain.extend_from_slice(&stored[range]);
            }
            Some(n) => {
                plain.set_len(n as usize);
                let got = dctx
                    .decompress_to_buffer(&stored[range], plain.as_mut_slice())
                    .map_err(|e| bad(format!("vault blob {}: {e}", Id::new(*id).to_hex().as_str())))?;
                plain.set_len(got);
            }
        }
        let data = plain.as_slice();
        if data.len() != *len {
            return Err(bad(format!(
                "vault blob {} has the wrong length",
                Id::new(*id).to_hex().as_str()
            )));
        }
        if sha256(data) != *id {
            return Err(bad(format!(
                "vault blob {} does not match the snapshot's content id",
                Id::new(*id).to_hex().as_str()
            )));
        }
        for (t, off) in dst {
            let target = &targets[*t];
            target
                .writer
                .write_at(data, *off)
                .map_err(|e| EngineError::io(format!("write {}", target.path.display()), e))?;
            done.add(data.len() as u64);
            verified.add(data.len() as u64);
        }
    }
    Ok(())
}

/// Reads the blob `id` at `loc` (a tree, say), checked against its id.
pub(crate) fn read_blob(be: &VaultBackend, crypto: &Crypto, loc: &BlobLoc, id: &Hash) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.length as usize];
    be.read_pack_range(&Id::new(loc.pack), loc.offset, &mut buf)?;
    let mut dctx = zstd::bulk::Decompressor::new().map_err(|e| repo_err(format!("zstd: {e}")))?;
    open_blob(crypto, &mut dctx, &mut buf, loc, id)
}
