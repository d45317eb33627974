//! The global allocator of the binary and the benches (the default `mimalloc` feature).
//!
//! mimalloc's own Rust wrapper asks for every block with `mi_malloc_aligned(size, align)`.
//! Nearly every block Rust asks for needs no more alignment than a plain `mi_malloc` gives
//! (every mimalloc block is aligned to a machine word: its size classes are multiples of a word),
//! and the aligned entry point costs more per call: it checks the first free block's address,
//! and past 1 KiB takes a generic path that over-allocates unless the size class is a power of
//! two. So blocks whose alignment the plain calls already give go to `mi_malloc`, `mi_zalloc`
//! and `mi_realloc`; the others keep the aligned calls. Both kinds are freed by `mi_free`, and
//! mimalloc's own `mi_realloc_aligned` takes the plain path for the same alignments
//! (docs/performance.md, *Round 5*).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every block of `mi_malloc` has: a machine word. Not C's `max_align_t` (16):
/// mimalloc's 24-, 40- and 56-byte size classes are only word-aligned.
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc, called the cheapest way that still gives each block its alignment.
pub struct Allocator;

/// Whether a plain (unaligned) call gives a block the alignment `align` (a power of two):
/// every block is word-aligned, the smallest (a word) too.
#[inline]
fn plain(align: usize) -> bool {
    align <= PLAIN_ALIGN
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` frees blocks of both
// the plain and the aligned calls); a plain call is used only where its block has the layout's
// alignment ([`plain`]), and a reallocation keeps the alignment the same way.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align()) {
            mi::mi_malloc(layout.size()) as *mut u8
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align()) {
            mi::mi_zalloc(layout.size()) as *mut u8
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align()) {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned, writable, and keeps its
    /// bytes through reallocations that grow and shrink it; zeroed blocks are zero. Fails when
    /// [`plain`] lets a plain call serve an alignment it does not give.
    #[test]
    fn blocks_have_their_layouts_alignment_through_reallocation() {
        let a = Allocator;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [
                1usize, 3, 7, 8, 9, 15, 16, 17, 24, 100, 1024, 1025, 5000, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: the layouts are non-zero; each block is used within its size, and
                // freed once with the layout it has at that point.
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *p.add(i) == 0));
                        }
                        for i in 0..size {
                            *p.add(i) = i as u8;
                        }
                        let mut p = p;
                        let mut len = size;
                        for new in [size * 3 + 1, size.div_ceil(2), size + 40_000] {
                            p = a.realloc(p, Layout::from_size_align(len, align).unwrap(), new);
                            assert!(!p.is_null());
                            assert_eq!(p as usize % align, 0, "realloc {len}->{new} align {align}");
                            let kept = len.min(new);
                            assert!((0..kept).all(|i| *p.add(i) == i as u8));
                            for i in kept..new {
                                *p.add(i) = i as u8;
                            }
                            len = new;
                        }
                        a.dealloc(p, Layout::from_size_align(len, align).unwrap());
                    }
                }
            }
        }
    }
}
