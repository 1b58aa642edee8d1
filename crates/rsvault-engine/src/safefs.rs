//! Host files opened without following symlinks, and writes relative to an opened directory.
//!
//! rsvault runs as root over directories that unprivileged users may be able to write. A path
//! checked by the control plane (resolved, inside a grant) can still be changed before it is used:
//! a component swapped for a symlink would lead a root-owned open anywhere. So every source image
//! and every disk restore target is reached here by walking the path from `/` one component at a
//! time with `openat(…, O_NOFOLLOW)`: a symlink anywhere on the way is refused (`ELOOP` /
//! `ENOTDIR`), never followed, and `..` is refused outright. Restores then create, rename and
//! remove their files relative to the opened parent directory (`openat`, `renameat`, `unlinkat`),
//! so swapping the parent for a symlink after it was opened changes nothing.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a file name", name.to_string_lossy()),
        ));
    }
    Ok(())
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`; `dir` `None` is `/`.
fn openat_raw(dir: Option<&File>, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let c = cstr(name)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid NUL-terminated name and an open directory fd (or AT_FDCWD); the returned
    // fd is owned by the File below.
    let fd = unsafe {
        libc::openat(
            dfd,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the directory `path` (absolute), following no symlink on the way.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    if !path.is_absolute() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"));
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let mut dir = openat_raw(None, OsStr::new("/"), flags, 0)?;
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => dir = openat_raw(Some(&dir), name, flags, 0)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "'..' or '.' in a path rsvault opens",
                ))
            }
        }
    }
    Ok(dir)
}

/// The opened parent directory of `path` and its file name.
pub(crate) fn open_parent(path: &Path) -> io::Result<(File, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    Ok((open_dir(parent)?, name))
}

/// Opens `name` in `dir` (not following a symlink there).
pub(crate) fn open_in(dir: &File, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    check_name(name)?;
    openat_raw(Some(dir), name, flags, mode)
}

/// Opens an existing regular file read-only, following no symlink anywhere on its path.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    let (dir, name) = open_parent(path)?;
    // O_NONBLOCK: a FIFO planted at the path must not hang the open; cleared below.
    let f = open_in(&dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    // SAFETY: fcntl on an owned, open fd.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: `None` when nothing is there.
pub(crate) fn stat_in(dir: &File, name: &OsStr) -> io::Result<Option<libc::stat>> {
    check_name(name)?;
    let c = cstr(name)?;
    // SAFETY: zeroed stat is a valid out-buffer; fd and name are valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `renameat(dir, from, dir, to)`.
pub(crate) fn rename_in(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    check_name(from)?;
    check_name(to)?;
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: valid fds and NUL-terminated names.
    let r = unsafe { libc::renameat(dir.as_raw_fd(), a.as_ptr(), dir.as_raw_fd(), b.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `unlinkat(dir, name, 0)`.
pub(crate) fn remove_in(dir: &File, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    let c = cstr(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    let r = unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A second descriptor of the same open file with other flags (through `/proc/self/fd`, which
/// names the open file itself, not a path that could be swapped).
pub(crate) fn reopen(f: &File, flags: libc::c_int) -> io::Result<File> {
    let p = format!("/proc/self/fd/{}", f.as_raw_fd());
    let c = CString::new(p).map_err(|_| io::Error::other("fd path"))?;
    // SAFETY: a valid path; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fchown` + `fchmod` on an open file.
pub(crate) fn set_owner_mode(f: &File, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: fchown/fchmod on an owned, open fd.
    if unsafe { libc::fchown(f.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_refused_anywhere_on_the_path() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(root.join("real/f"), root.join("real/filelink")).unwrap();
        assert!(open_regular(&root.join("real/f")).is_ok());
        assert!(open_regular(&root.join("dirlink/f")).is_err(), "a symlinked parent");
        assert!(open_regular(&root.join("real/filelink")).is_err(), "a symlinked file");
        assert!(open_regular(&root.join("real/../real/f")).is_err(), "'..'");
        assert!(open_regular(&root.join("real")).is_err(), "a directory");
        assert!(open_dir(&root.join("dirlink")).is_err());
        let dir = open_dir(&root.join("real")).unwrap();
        assert!(stat_in(&dir, OsStr::new("filelink")).unwrap().is_some());
        assert!(stat_in(&dir, OsStr::new("nothing")).unwrap().is_none());
        assert!(open_in(&dir, OsStr::new(".."), libc::O_RDONLY, 0).is_err());
        rename_in(&dir, OsStr::new("f"), OsStr::new("g")).unwrap();
        remove_in(&dir, OsStr::new("g")).unwrap();
        assert!(!root.join("real/g").exists());
    }
}
