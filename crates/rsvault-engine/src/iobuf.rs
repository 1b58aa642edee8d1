//! Page-aligned byte buffers for direct I/O (`O_DIRECT`).
//!
//! The engine writes pack files and restored raw images with `O_DIRECT` where the filesystem
//! allows it: on the machines rsvault targets, copying hundreds of MiB through the page cache and
//! then flushing it costs more CPU than everything else a backup does. Direct I/O needs the
//! buffer address, the length and the file offset aligned to the device's block size;
//! [`AlignedBuf`] provides the first (aligned to [`ALIGN`], a multiple of every common logical
//! block size), callers take care of the other two and fall back to ordinary writes for the
//! unaligned tail. Durability rules do not change: files are still `fsync`ed (see
//! [`crate::backend`]).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of buffers, offsets and lengths for direct I/O.
pub(crate) const ALIGN: usize = 4096;

/// A growable byte buffer whose start is [`ALIGN`]-aligned. Its whole capacity is zeroed at
/// allocation, so every byte up to the capacity is initialised.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (&self methods only read).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer able to hold `cap` bytes (rounded up to [`ALIGN`]) without growing.
    pub fn with_capacity(cap: usize) -> Self {
        let cap = cap.max(1).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(cap, ALIGN).expect("valid layout");
        // SAFETY: layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len: 0, cap }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Sets the length (growing the buffer if needed). Bytes past the old length keep whatever
    /// they held (zeros or earlier content; always initialised).
    pub fn set_len(&mut self, n: usize) {
        if n > self.cap {
            self.grow(n);
        }
        self.len = n;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn extend_from_slice(&mut self, s: &[u8]) {
        let new = self.len + s.len();
        if new > self.cap {
            self.grow(new.max(self.cap * 2));
        }
        let old = self.len;
        self.len = new;
        self.as_mut_slice()[old..].copy_from_slice(s);
    }

    fn grow(&mut self, at_least: usize) {
        let mut bigger = Self::with_capacity(at_least);
        bigger.len = self.len;
        bigger.as_mut_slice().copy_from_slice(self.as_slice());
        std::mem::swap(self, &mut bigger);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in with_capacity with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.cap, ALIGN)) }
    }
}

/// Whether `data` at file offset `off` can be written with direct I/O as is.
pub(crate) fn is_aligned(data: &[u8], off: u64) -> bool {
    (data.as_ptr() as usize).is_multiple_of(ALIGN)
        && data.len().is_multiple_of(ALIGN)
        && off.is_multiple_of(ALIGN as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_growing() {
        let mut b = AlignedBuf::with_capacity(10);
        assert_eq!(b.capacity(), ALIGN);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        b.extend_from_slice(&[1, 2, 3]);
        b.extend_from_slice(&vec![7u8; 3 * ALIGN]);
        assert_eq!(b.len(), 3 + 3 * ALIGN);
        assert_eq!(&b.as_slice()[..4], &[1, 2, 3, 7]);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        b.set_len(1);
        assert_eq!(b.as_slice(), &[1]);
        assert!(is_aligned(&b.as_slice()[..0], 0));
        b.set_len(ALIGN);
        assert!(is_aligned(b.as_slice(), ALIGN as u64));
        assert!(!is_aligned(b.as_slice(), 1));
        assert!(!is_aligned(&b.as_slice()[1..], 0));
    }
}
