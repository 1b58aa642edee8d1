//! VM disk images: probing, reading the guest-visible content, writing restored images.
//!
//! A disk is a local raw or qcow2 file. qcow2 is read through `imago` as its virtual content
//! (what the guest sees, backing chain included); raw is read directly. Reading goes in
//! [`DISK_CHUNK_SIZE`] pieces aligned to the chunker's boundaries; a piece the image says is
//! unallocated (a qcow2 zero/unallocated mapping, a raw file hole found with `SEEK_DATA`) is
//! produced as zeros without touching the disk. Restored images are written with holes where the
//! snapshot holds all-zero chunks (raw: a sparse file; qcow2: clusters never allocated).
//! This module never shells out.
//!
//! Sources are opened once, through [`crate::safefs`]: no symlink is followed anywhere on the path,
//! the file must be a regular file, and everything after (probe, snapshot, read) uses that one
//! descriptor. A qcow2 image that names a backing file or an external data file is refused: `imago`
//! opens it with a gate that denies every implicit open, so it never reads a file the image names
//! (a user-made qcow2 whose backing file is `/etc/shadow` reads nothing of it). Restored images
//! are created mode 0600, relative to an opened directory.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping};

use crate::error::{EngineError, IoContext, Result};

/// On-disk format of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageFormat {
    /// A raw image: the file is the disk.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// What [`probe`] finds out about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// The image format.
    pub format: ImageFormat,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

type Qcow2Image = FormatAccess<imago::file::File>;

fn source_err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Source {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Refuses a qcow2 header that names a backing file or needs an external data file (checked
/// before `imago` sees the image, for a clear reason; `imago`'s deny-all gate is the second line).
fn check_qcow2_header(f: &fs::File, path: &Path) -> Result<()> {
    let mut h = [0u8; 80];
    let n = f.read_at(&mut h, 0).map_err(|e| source_err(path, e.to_string()))?;
    if n < 72 {
        return Err(source_err(path, "not a readable qcow2 image: short header"));
    }
    let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let version = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
    if be64(8) != 0 {
        return Err(source_err(
            path,
            "a qcow2 image with a backing file: rsvault backs up only self-contained images",
        ));
    }
    // Incompatible feature bit 2: an external data file.
    if version >= 3 && n >= 80 && be64(72) & 0b100 != 0 {
        return Err(source_err(
            path,
            "a qcow2 image with an external data file: rsvault backs up only self-contained images",
        ));
    }
    Ok(())
}

/// A qcow2 image over an already opened file; nothing else is ever opened.
fn open_qcow2(f: fs::File, path: &Path, write: bool) -> Result<Qcow2Image> {
    check_qcow2_header(&f, path)?;
    let storage = imago::file::File::from_open_file(f, imago::StorageOpenOptions::new().filename(path).write(write))
        .map_err(|e| source_err(path, e.to_string()))?;
    let q = Qcow2::<imago::file::File>::builder(storage)
        .write(write)
        .open(imago::DenyImplicitOpenGate::default())
        .map_err(|e| source_err(path, format!("not a readable qcow2 image: {e}")))?;
    Ok(FormatAccess::new(q))
}

/// Opens a source image: no symlink followed on its path, a regular file.
pub(crate) fn open_source(path: &Path) -> Result<fs::File> {
    crate::safefs::open_regular(path).map_err(|e| source_err(path, e.to_string()))
}

/// Identifies a disk image and its virtual size (a real qcow2 parse, not just the magic). The
/// path is opened as [`open_source`] does.
pub fn probe(path: &Path) -> Result<DiskInfo> {
    probe_file(&open_source(path)?, path)
}

/// [`probe`] of an opened image.
pub(crate) fn probe_file(f: &fs::File, path: &Path) -> Result<DiskInfo> {
    let meta = f.metadata().map_err(|e| source_err(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(source_err(path, "not a regular file"));
    }
    let mut magic = [0u8; 4];
    let n = f.read_at(&mut magic, 0).map_err(|e| source_err(path, e.to_string()))?;
    if n == 4 && &magic == QCOW2_MAGIC {
        let q = open_qcow2(f.try_clone().map_err(|e| source_err(path, e.to_string()))?, path, false)?;
        Ok(DiskInfo {
            format: ImageFormat::Qcow2,
            virtual_size: q.size(),
        })
    } else {
        Ok(DiskInfo {
            format: ImageFormat::Raw,
            virtual_size: meta.len(),
        })
    }
}

enum Image {
    Raw(fs::File),
    Qcow2(Box<Qcow2Image>),
}

impl Image {
    fn from_file(f: fs::File, path: &Path, format: ImageFormat) -> Result<Self> {
        Ok(match format {
            ImageFormat::Raw => Image::Raw(f),
            ImageFormat::Qcow2 => Image::Qcow2(Box::new(open_qcow2(f, path, false)?)),
        })
    }

    /// Whether `[off, off+len)` is known to read as zeros without reading it.
    fn is_unallocated(&self, off: u64, len: u64) -> std::io::Result<bool> {
        match self {
            Image::Raw(f) => {
                // SAFETY: lseek on an owned fd; SEEK_DATA does not move data.
                let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    // ENXIO: no data at or after `off`. EINVAL: no SEEK_DATA support.
                    return Ok(e.raw_os_error() == Some(libc::ENXIO));
                }
                Ok(r as u64 >= off + len)
            }
            Image::Qcow2(q) => {
                let mut pos = off;
                while pos < off + len {
                    let (m, l) = q.get_mapping(pos, off + len - pos)?;
                    match m {
                        Mapping::Zero { .. } | Mapping::Eof { .. } => {}
                        _ => return Ok(false),
                    }
                    if l == 0 {
                        break;
                    }
                    pos += l;
                }
                Ok(true)
            }
        }
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        match self {
            Image::Raw(f) => {
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(&mut buf[done..], off + done as u64)?;
                    if n == 0 {
                        // Shrunk while reading: the guard reports it; read as zeros.
                        buf[done..].fill(0);
                        break;
                    }
                    done += n;
                }
                Ok(())
            }
            Image::Qcow2(q) => q.read(&mut *buf, off),
        }
    }
}

/// Byte counters of one disk read.
#[derive(Debug, Default)]
pub(crate) struct ReadStats {
    /// Bytes handed to the chunker.
    pub scanned: AtomicU64,
    /// Bytes produced as zeros from unallocated regions without reading.
    pub skipped: AtomicU64,
    /// Bytes not read because changed-block tracking marks them unchanged since the parent
    /// (their chunks are the parent's).
    pub reused: AtomicU64,
}

/// A destination image being written by a restore.
pub(crate) enum ImageWriter {
    /// A raw image: the file, and a second descriptor with `O_DIRECT` (where the filesystem
    /// supports it) for aligned writes.
    Raw(fs::File, Option<fs::File>),
    Qcow2(Box<Qcow2Image>),
}

impl ImageWriter {
    /// Creates `name` in the opened directory `dir` (must not exist; mode 0600, no symlink
    /// followed) as an empty image of `size` bytes; `shown` names it in errors; `direct`: raw
    /// images may be written with direct I/O. Returns the writer and a descriptor of the file.
    pub fn create_in(
        dir: &fs::File,
        name: &OsStr,
        shown: &Path,
        format: ImageFormat,
        size: u64,
        direct: bool,
    ) -> Result<(Self, fs::File)> {
        let f = crate::safefs::open_in(dir, name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600)
            .ctx(|| format!("create {}", shown.display()))?;
        let handle = f.try_clone().ctx(|| format!("dup {}", shown.display()))?;
        match format {
            ImageFormat::Raw => {
                f.set_len(size).ctx(|| format!("size {}", shown.display()))?;
                let direct = direct
                    .then(|| crate::safefs::reopen(&f, libc::O_WRONLY | libc::O_DIRECT).ok())
                    .flatten();
                Ok((Self::Raw(f, direct), handle))
            }
            ImageFormat::Qcow2 => {
                let storage =
                    imago::file::File::from_open_file(f, imago::StorageOpenOptions::new().filename(shown).write(true))
                        .ctx(|| format!("open {}", shown.display()))?;
                let q = Qcow2::<imago::file::File>::create_builder(storage)
                    .size(size)
                    .create_open(imago::DenyImplicitOpenGate::default(), |image| {
                        Ok(Qcow2::<imago::file::File>::builder(image).backing(None).write(true))
                    })
                    .ctx(|| format!("format qcow2 {}", shown.display()))?;
                Ok((Self::Qcow2(Box::new(FormatAccess::new(q))), handle))
            }
        }
    }

    /// Writes `data` at `off`: with direct I/O when buffer, length and offset are aligned
    /// (see [`crate::iobuf`]), else through the page cache (then writeback is started at once,
    /// so the final `fsync` has less left to do).
    pub fn write_at(&self, data: &[u8], off: u64) -> std::io::Result<()> {
        match self {
            Self::Raw(f, Some(d)) if crate::iobuf::is_aligned(data, off) => match d.write_all_at(data, off) {
                // A filesystem that accepted O_DIRECT at open but refuses the write.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    f.write_all_at(data, off)?;
                    Self::start_writeback(f, off, data.len() as u64);
                    Ok(())
                }
                r => r,
            },
            Self::Raw(f, _) => {
                f.write_all_at(data, off)?;
                Self::start_writeback(f, off, data.len() as u64);
                Ok(())
            }
            Self::Qcow2(q) => q.write(data, off),
        }
    }

    /// Starts writing `[off, off+len)` back to the disk without waiting (raw images), so the
    /// final `fsync` has less left to do. Only a hint: errors surface at [`Self::finish`].
    fn start_writeback(f: &fs::File, off: u64, len: u64) {
        // SAFETY: sync_file_range on an owned, open fd; no memory is passed.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                off as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// Flushes metadata and data to stable storage.
    pub fn finish(self) -> std::io::Result<()> {
        match self {
            Self::Raw(f, _) => f.sync_all(),
            Self::Qcow2(q) => {
                q.flush()?;
                q.sync()
            }
        }
    }
}

/// Reads `len` bytes at `off` of a (restored) image's virtual content.
pub(crate) struct ImageReader(Image);

impl ImageReader {
    /// A reader over an opened image file (`path` names it in errors).
    pub fn from_file(f: fs::File, path: &Path, format: ImageFormat) -> Result<Self> {
        Ok(Self(Image::from_file(f, path, format)?))
    }
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.0.read_at(buf, off)
    }
    /// Whether `[off, off+len)` is known to read as zeros without reading it (a raw file's
    /// hole, a qcow2 zero or unallocated range).
    pub fn is_unallocated(&self, off: u64, len: u64) -> std::io::Result<bool> {
        self.0.is_unallocated(off, len)
    }
}
