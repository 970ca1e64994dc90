//! Zeroed float buffers for packed weights and activation maps, backed by 2 MB pages where
//! Linux has them (transparent huge pages in `madvise` mode).
//!
//! An inference at batch 1 streams every weight once, about 17 MB for V1: thousands of 4 KB
//! pages, more than the TLB holds, and the hardware prefetchers stop at each 4 KB boundary.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Buffers from this size up are mapped on their own, 2 MB aligned, with huge pages asked for.
const HUGE_FROM_BYTES: usize = 1 << 20;
const HUGE_PAGE: usize = 2 << 20;

pub struct Buffer {
    data: NonNull<f32>,
    len: usize,
    /// The whole mapping (base, bytes) when the buffer was mapped on its own.
    mapping: Option<(NonNull<u8>, usize)>,
    /// Otherwise a plain vector owns the floats (`data` points into it).
    _owner: Vec<f32>,
}

// The buffer owns its memory like a Vec<f32> does.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    pub fn zeroed(len: usize) -> Buffer {
        let bytes = len * std::mem::size_of::<f32>();
        if bytes >= HUGE_FROM_BYTES {
            if let Some(b) = Self::mapped(len, bytes) {
                return b;
            }
        }
        let mut vec = vec![0.0f32; len];
        let data = NonNull::new(vec.as_mut_ptr()).expect("a Vec's pointer is never null");
        Buffer { data, len, mapping: None, _owner: vec }
    }

    pub fn from_slice(values: &[f32]) -> Buffer {
        let mut b = Self::zeroed(values.len());
        b.copy_from_slice(values);
        b
    }

    #[cfg(target_os = "linux")]
    fn mapped(len: usize, bytes: usize) -> Option<Buffer> {
        // Anonymous mappings are zero-filled; one extra huge page leaves room to align.
        let total = bytes.div_ceil(HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let aligned = (base as usize).next_multiple_of(HUGE_PAGE);
        // SAFETY: the range lies inside the mapping. A refusal (no THP) only means 4 KB pages.
        unsafe { libc::madvise(aligned as *mut libc::c_void, total - (aligned - base as usize), libc::MADV_HUGEPAGE) };
        Some(Buffer {
            data: NonNull::new(aligned as *mut f32)?,
            len,
            mapping: Some((NonNull::new(base as *mut u8)?, total)),
            _owner: Vec::new(),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn mapped(_len: usize, _bytes: usize) -> Option<Buffer> {
        None
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some((base, total)) = self.mapping {
            // SAFETY: the mapping made in `mapped`, unmapped once.
            unsafe { libc::munmap(base.as_ptr() as *mut libc::c_void, total) };
        }
    }
}

impl Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `data` points at `len` initialised floats owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} floats{})", self.len, if self.mapping.is_some() { ", own mapping" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::Buffer;

    #[test]
    fn small_and_mapped_buffers_are_zeroed_and_writable() {
        for len in [0, 5, 300_000, 1_000_003] {
            let mut b = Buffer::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0.0));
            if len > 0 {
                b[len - 1] = 7.0;
                assert_eq!(b[len - 1], 7.0);
            }
        }
        let src: Vec<f32> = (0..400_000).map(|i| i as f32).collect();
        assert_eq!(&Buffer::from_slice(&src)[..], &src[..]);
    }
}
