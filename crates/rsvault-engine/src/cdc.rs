//! Content-defined chunking exactly as rustic_core 0.13 (and so every rsvault share backup made
//! before the engine's own share pipeline) cuts files: restic's Rabin fingerprint over a 64-byte
//! window with the repository's polynomial (`chunker_polynomial` in its config), a cut where the
//! fingerprint's low `log2(chunk_size)` bits are zero, at least `chunk_min_size` and at most
//! `chunk_max_size` bytes (restic's 512 KiB / 1 MiB / 8 MiB unless the config says otherwise).
//! The same cuts give the same blob ids, so a vault keeps deduplicating across the two paths.
//!
//! rustic_core keeps its chunker private and feeds it one byte at a time from a reader; here the
//! cut is found in a slice ([`Chunker::cut`]) that holds at least `max` bytes from the chunk's
//! start (or the rest of the file), with the fingerprint tables computed once per backup.
//! rustic_core's quirk is kept: at a chunk's start the window is prefilled with the 63 bytes
//! that end one byte before `min`, and the fingerprint test comes before each byte is added.

use rustic_core::repofile::{Chunker as ChunkerKind, ConfigFile};

use crate::error::Result;
use crate::format::repo_err;

const WINDOW: usize = 64;

fn degree(p: u64) -> i32 {
    63 - p.leading_zeros() as i32
}

fn modulo(mut p: u64, m: u64) -> u64 {
    let dm = degree(m);
    while degree(p) >= dm {
        p ^= m << (degree(p) - dm);
    }
    p
}

/// How a repository cuts files into data blobs.
pub(crate) enum Chunker {
    Rabin {
        out_table: Box<[u64; 256]>,
        mod_table: Box<[u64; 256]>,
        shift: u32,
        mask: u64,
        min: usize,
        max: usize,
    },
    /// The repository asks for fixed-size chunks.
    Fixed(usize),
}

impl Chunker {
    /// The chunker a repository's config asks for.
    pub fn of_config(config: &ConfigFile) -> Result<Self> {
        match config.chunker() {
            ChunkerKind::FixedSize => Ok(Self::Fixed(config.chunk_size().max(1))),
            ChunkerKind::Rabin => {
                let poly = config.poly()?;
                Self::rabin(
                    poly,
                    config.chunk_size(),
                    config.chunk_min_size(),
                    config.chunk_max_size(),
                )
            }
        }
    }

    pub fn rabin(poly: u64, size: usize, min: usize, max: usize) -> Result<Self> {
        if !size.is_power_of_two() || min > size || max < size || min < WINDOW || degree(poly) < 8 {
            return Err(repo_err(format!(
                "unsupported chunker parameters (size {size}, min {min}, max {max})"
            )));
        }
        let mut out_table = Box::new([0u64; 256]);
        let mut mod_table = Box::new([0u64; 256]);
        let k = degree(poly);
        for b in 0..256usize {
            let mut h = modulo(b as u64, poly);
            for _ in 0..WINDOW - 1 {
                h = modulo(h << 8, poly);
            }
            out_table[b] = h;
            let p = (b as u64) << k;
            mod_table[b] = modulo(p, poly) | p;
        }
        Ok(Self::Rabin {
            out_table,
            mod_table,
            shift: (k - 8) as u32,
            mask: size as u64 - 1,
            min,
            max,
        })
    }

    /// The largest chunk: [`Chunker::cut`] needs this many bytes (or the rest of the file).
    pub fn max(&self) -> usize {
        match self {
            Self::Rabin { max, .. } => *max,
            Self::Fixed(n) => *n,
        }
    }

    /// The length of the chunk that starts at `data[0]`. `data` holds at least [`Chunker::max`]
    /// bytes, or everything up to the end of the file.
    pub fn cut(&self, data: &[u8]) -> usize {
        match self {
            Self::Fixed(n) => data.len().min(*n),
            Self::Rabin {
                out_table,
                mod_table,
                shift,
                mask,
                min,
                max,
            } => {
                let (min, max) = (*min, *max);
                if data.len() <= min {
                    return data.len();
                }
                let mut win = [0u8; WINDOW];
                let mut idx = 0usize;
                let mut h = 0u64;
                for &b in &data[min - WINDOW..min - 1] {
                    win[idx] = b;
                    let m = (h >> shift) & 255;
                    h = ((h << 8) | u64::from(b)) ^ mod_table[m as usize];
                    idx = (idx + 1) & (WINDOW - 1);
                }
                win[idx] = 0;
                let end = data.len().min(max);
                let mut pos = min;
                while pos < end {
                    if h & mask == 0 {
                        break;
                    }
                    let b = data[pos];
                    h ^= out_table[win[idx] as usize];
                    win[idx] = b;
                    let m = (h >> shift) & 255;
                    h = ((h << 8) | u64::from(b)) ^ mod_table[m as usize];
                    idx = (idx + 1) & (WINDOW - 1);
                    pos += 1;
                }
                pos
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustic_cdc::{Rabin64, RollingHash64};
    use std::io::Read;

    /// rustic_core 0.13's `ChunkIter::next`, transcribed with its `Rabin64` (the reference).
    fn reference(data: &[u8], poly: u64, size: usize, min: usize, max: usize) -> Vec<usize> {
        let mut rabin = Rabin64::new_with_polynom(6, &poly);
        let mask = size as u64 - 1;
        let mut reader = std::io::Cursor::new(data);
        let mut buf = vec![0u8; 4096];
        let mut pos = buf.len();
        let mut out = vec![];
        let mut finished = false;
        while !finished {
            let mut min_size = min;
            let mut vec = Vec::new();
            let open = buf.len() - pos;
            if open > 0 {
                vec.extend_from_slice(&buf[pos..]);
                pos = buf.len();
                min_size -= open;
            }
            let size = (&mut reader).take(min_size as u64).read_to_end(&mut vec).unwrap();
            if size < min_size {
                if !vec.is_empty() {
                    out.push(vec.len());
                }
                break;
            }
            let _ = rabin.reset_and_prefill_window(&mut vec[vec.len() - 64..].iter().copied());
            loop {
                if vec.len() >= max || rabin.hash & mask == 0 {
                    break;
                }
                if buf.len() == pos {
                    let n = reader.read(&mut buf[..]).unwrap();
                    if n == 0 {
                        finished = true;
                        break;
                    }
                    pos = 0;
                    buf.truncate(n);
                }
                let b = buf[pos];
                vec.push(b);
                pos += 1;
                rabin.slide(b);
            }
            out.push(vec.len());
        }
        out
    }

    fn ours(data: &[u8], c: &Chunker) -> Vec<usize> {
        let mut out = vec![];
        let mut at = 0;
        while at < data.len() {
            let n = c.cut(&data[at..]);
            out.push(n);
            at += n;
        }
        out
    }

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn cuts_where_rustic_core_cuts() {
        // Small parameters so that many cuts (and the max and end-of-file cases) are exercised
        // (the minimum stays above the reference's 4 KiB read buffer, as rustic_core needs).
        let (size, min, max) = (1 << 14, 8192, 65536);
        for (poly, seed) in [(0x003D_A335_8B4D_C173u64, 1u64), (0x0023_3C3C_3F55_1B83, 2)] {
            let c = Chunker::rabin(poly, size, min, max).unwrap();
            let mut data = noise(seed, 1_500_000);
            data.extend(std::iter::repeat_n(7u8, 200_000)); // no cut: max-size chunks
            data.extend(noise(seed + 9, 777));
            let got = ours(&data, &c);
            assert!(got.len() > 40 && got.contains(&max), "{got:?}");
            assert_eq!(got, reference(&data, poly, size, min, max));
            for len in [0, 1, min - 1, min, min + 1, max - 1, max, max + 1] {
                assert_eq!(
                    ours(&data[..len], &c),
                    reference(&data[..len], poly, size, min, max),
                    "{len}"
                );
            }
        }
        // restic's defaults.
        let c = Chunker::rabin(0x003D_A335_8B4D_C173, 1 << 20, 512 << 10, 8 << 20).unwrap();
        let data = noise(3, 12 << 20);
        assert_eq!(
            ours(&data, &c),
            reference(&data, 0x003D_A335_8B4D_C173, 1 << 20, 512 << 10, 8 << 20)
        );
    }
}
