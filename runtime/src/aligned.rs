//! [`AlignedBuf`]: a zero-initialized, 64-byte-aligned buffer of `f32` that owns its memory, for packed
//! constants and activation arenas.
//!
//! A length enters ([`AlignedBuf::zeroed`]) or a slice to copy ([`AlignedBuf::from_slice`]); the buffer
//! leaves as a `&[f32]`/`&mut [f32]` (it derefs to a slice) and raw pointers for kernels. Small buffers come
//! from the global allocator; on Linux, buffers from 2 MB up are anonymous mappings advised to use
//! transparent huge pages (see [`AlignedBuf::zeroed`]).

use crate::abi::ALIGN;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// A zero-initialized, 64-byte-aligned buffer of `f32`.
pub struct AlignedBuf {
    ptr: NonNull<f32>,
    len: usize,
    /// Bytes between the allocation's start and `ptr`.
    pad: usize,
    /// Whether the allocation is an anonymous mapping of `Self::map_len(len)` bytes (large buffers).
    mapped: bool,
}

/// Buffers from this size up are mapped directly, in transparent huge pages where the kernel allows.
const MAP_THRESHOLD: usize = 2 << 20;
const HUGE: usize = 2 << 20;

// SAFETY: AlignedBuf uniquely owns its allocation, like a Vec<f32>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf { ptr: NonNull::<[f32; 16]>::dangling().cast(), len, pad: 0, mapped: false };
        }
        #[cfg(target_os = "linux")]
        if len * 4 >= MAP_THRESHOLD {
            if let Some(b) = Self::mapped(len) {
                return b;
            }
        }
        // Allocated with the allocator's natural alignment and aligned by hand: the system allocator zeroes
        // over-aligned requests with a memset, but natural-alignment ones with calloc, which hands out fresh
        // pages already zero (the ~100 MB of ResNet-50's packed weights took 75 ms to memset).
        let layout = Self::layout(len);
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let pad = base.align_offset(ALIGN);
        // SAFETY: `pad < ALIGN` and the allocation has `ALIGN` spare bytes.
        let ptr = unsafe { NonNull::new_unchecked(base.add(pad) as *mut f32) };
        AlignedBuf { ptr, len, pad, mapped: false }
    }

    fn map_len(len: usize) -> usize {
        (len * 4).next_multiple_of(HUGE) + HUGE
    }

    /// An anonymous mapping (zero pages, faulted in on first touch), 2 MB-aligned and advised to use huge
    /// pages: ResNet-50's ~100 MB of packed weights are faulted in as ~50 pages instead of ~25,000 (faults
    /// cost microseconds each on this VM: the copy into the program took 120 ms), and streaming them at run
    /// time misses the TLB less. `None` if the mapping fails (the caller falls back to the heap).
    #[cfg(target_os = "linux")]
    fn mapped(len: usize) -> Option<AlignedBuf> {
        let size = Self::map_len(len);
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as *mut u8;
        let pad = base.align_offset(HUGE);
        // SAFETY: `pad < HUGE` and the mapping has `HUGE` spare bytes; madvise is only advice.
        unsafe {
            let p = base.add(pad) as *mut libc::c_void;
            let used = (len * 4).next_multiple_of(4096);
            libc::madvise(p, used.next_multiple_of(HUGE), libc::MADV_HUGEPAGE);
            // Fault everything in with one call (Linux >= 5.14; harmless where unknown): the buffer is
            // about to be written in full, and one call is much cheaper than ~50-25,000 page faults.
            libc::madvise(p, used, libc::MADV_POPULATE_WRITE);
            Some(AlignedBuf { ptr: NonNull::new_unchecked(base.add(pad) as *mut f32), len, pad, mapped: true })
        }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len * 4 + ALIGN, 16).expect("buffer too large")
    }

    pub fn from_slice(s: &[f32]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(s.len());
        b.as_mut_slice().copy_from_slice(s);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const f32 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: owned, initialized allocation of `len` floats.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: mapped in `mapped` with this length, `pad` bytes before `ptr`.
            unsafe {
                libc::munmap(
                    (self.ptr.as_ptr() as *mut u8).sub(self.pad) as *mut libc::c_void,
                    Self::map_len(self.len),
                );
            }
            return;
        }
        if self.len != 0 {
            // SAFETY: allocated in `zeroed` with this layout, `pad` bytes before `ptr`.
            unsafe { dealloc((self.ptr.as_ptr() as *mut u8).sub(self.pad), Self::layout(self.len)) }
        }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::zeroed(0)
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.as_mut_slice()
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        AlignedBuf::from_slice(self.as_slice())
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} floats)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_mapped_zeroed_and_aligned() {
        for len in [1, 17, MAP_THRESHOLD / 4 + 3] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
            b[0] = 1.0;
            b[len - 1] = 5.0;
            let c = b.clone();
            assert_eq!((c[0], c[len - 1]), (if len == 1 { 5.0 } else { 1.0 }, 5.0));
        }
    }
}
