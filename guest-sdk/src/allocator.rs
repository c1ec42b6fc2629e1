//! The guest's global allocator on single-threaded wasm: size classes with
//! free lists, for the short-lived small blocks of a guest call.
//!
//! A `decide` allocates about ten small blocks (the arguments the host
//! copies in, the encoded events, state and reply, the decision's vectors)
//! and frees them all before the next call, which the standard library's
//! allocator (dlmalloc, behind three wrapper calls) serves at a high cost
//! per block (docs/BENCHMARKS.md). Here a block of up to
//! [`MAX_SMALL`] bytes comes from the free list of its size class (a
//! multiple of [`GRAIN`]), else from a bump pointer in a 64 KiB chunk; a
//! freed block goes back to the head of its list. The size class is
//! computed from the `Layout` that `dealloc` receives, so blocks carry no
//! header. Larger or more aligned blocks go to the standard allocator.
//! Small blocks are never handed back to it: a behavior's working set
//! of small blocks stays reserved for reuse (the instance's memory cap still
//! bounds it, since chunks come from the standard allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size-class granularity and the alignment every small block gets.
pub(crate) const GRAIN: usize = 16;
/// Number of size classes.
const CLASSES: usize = 64;
/// The largest block served from size classes.
pub(crate) const MAX_SMALL: usize = GRAIN * CLASSES;
/// Bytes taken from the standard allocator at a time for small blocks.
const CHUNK: usize = 64 * 1024;

/// The allocator (see the module header).
pub(crate) struct SizeClasses {
    inner: UnsafeCell<Lists>,
}

struct Lists {
    /// Head of each size class's free list; a free block holds the next.
    free: [*mut u8; CLASSES],
    /// The unused part of the current chunk.
    bump: *mut u8,
    end: *mut u8,
}

// SAFETY: only compiled into the global allocator on wasm without the
// `atomics` feature, where a module has a single thread.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

/// The size class of a layout, or `None` for the standard allocator.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > GRAIN {
        return None;
    }
    Some(layout.size().max(1).div_ceil(GRAIN) - 1)
}

impl SizeClasses {
    /// An allocator with empty lists and no chunk yet.
    pub(crate) const fn new() -> SizeClasses {
        SizeClasses {
            inner: UnsafeCell::new(Lists {
                free: [ptr::null_mut(); CLASSES],
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
        }
    }

    /// A block of class `class` from the bump pointer, taking a new chunk
    /// when the current one is used up (its tail is left unused).
    ///
    /// # Safety
    /// No other reference to the lists may be live.
    unsafe fn bump(&self, class: usize) -> *mut u8 {
        // SAFETY: the caller guarantees exclusive access.
        let lists = unsafe { &mut *self.inner.get() };
        let size = (class + 1) * GRAIN;
        if (lists.end as usize) - (lists.bump as usize) < size {
            // SAFETY: the layout has a non-zero size.
            let chunk = unsafe { System.alloc(Layout::from_size_align(CHUNK, GRAIN).unwrap()) };
            if chunk.is_null() {
                return chunk;
            }
            lists.bump = chunk;
            // SAFETY: `chunk` is CHUNK bytes long.
            lists.end = unsafe { chunk.add(CHUNK) };
        }
        let block = lists.bump;
        // SAFETY: checked above that `size` bytes remain in the chunk.
        lists.bump = unsafe { block.add(size) };
        block
    }
}

// SAFETY: a small block is a distinct `(class + 1) * GRAIN`-byte region of a
// chunk, 16-aligned (chunks are 16-aligned and sizes are multiples of 16),
// handed out at most once until it is freed; everything else is the standard
// allocator's.
unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded, and no reference to the lists escapes a call.
        let lists = unsafe { &mut *self.inner.get() };
        let head = lists.free[class];
        if head.is_null() {
            // SAFETY: `lists` is not used after this call.
            return unsafe { self.bump(class) };
        }
        // SAFETY: a free block holds the next block of its list.
        lists.free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: a block of this layout came from `System`.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: single-threaded, and no reference to the lists escapes a call.
        let lists = unsafe { &mut *self.inner.get() };
        // SAFETY: the block is ours, at least 16 bytes and 16-aligned.
        unsafe { block.cast::<*mut u8>().write(lists.free[class]) };
        lists.free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = class_of(layout);
        if old.is_some()
            && Layout::from_size_align(new_size, layout.align())
                .ok()
                .and_then(class_of)
                == old
        {
            // The block already has room for the new size.
            return block;
        }
        if old.is_none() && new_size > MAX_SMALL {
            // SAFETY: both the old and the new block are the standard allocator's.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // SAFETY: the new layout is valid (`realloc`'s contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least the smaller size, and differ.
            unsafe {
                ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    //! The allocator is the global one only on wasm; here it is exercised
    //! directly, as an ordinary value on one thread.

    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn size_classes_cover_small_blocks_only() {
        assert_eq!(class_of(layout(0, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(MAX_SMALL, 16)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(MAX_SMALL + 1, 1)), None);
        assert_eq!(class_of(layout(8, 32)), None);
    }

    /// Many blocks of mixed sizes, freed in a scrambled order and allocated
    /// again: every live block is aligned, keeps its contents and overlaps no
    /// other; freed blocks are reused; reallocation keeps the contents.
    #[test]
    fn blocks_are_aligned_distinct_reused_and_keep_their_bytes() {
        let a = SizeClasses::new();
        let sizes = [1usize, 7, 16, 24, 100, 1000, 1024, 1025, 5000];
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        for round in 0..3u8 {
            for (i, &size) in sizes.iter().cycle().take(3000).enumerate() {
                let l = layout(size, if i % 3 == 0 { 8 } else { 1 });
                let p = unsafe { a.alloc(l) };
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0);
                let tag = (i as u8) ^ round;
                unsafe { ptr::write_bytes(p, tag, size) };
                live.push((p, l, tag));
            }
            let mut spans: Vec<(usize, usize)> = live
                .iter()
                .map(|(p, l, _)| (*p as usize, *p as usize + l.size()))
                .collect();
            spans.sort();
            assert!(
                spans.windows(2).all(|w| w[0].1 <= w[1].0),
                "live blocks overlap"
            );
            for (p, l, tag) in &live {
                let bytes = unsafe { std::slice::from_raw_parts(*p, l.size()) };
                assert!(bytes.iter().all(|b| b == tag), "a block lost its contents");
            }
            // Free two thirds, in a scrambled order.
            let mut keep = Vec::new();
            for (i, entry) in live.drain(..).enumerate() {
                if (i * 7) % 3 == 0 {
                    keep.push(entry);
                } else {
                    unsafe { a.dealloc(entry.0, entry.1) };
                }
            }
            live = keep;
        }
        // A freed small block is the next one of its class handed out.
        let l = layout(40, 8);
        let p = unsafe { a.alloc(l) };
        unsafe { a.dealloc(p, l) };
        assert_eq!(unsafe { a.alloc(l) }, p);
        // Growing through classes and out to the standard allocator keeps bytes.
        let mut p = p;
        let mut l = l;
        unsafe { ptr::write_bytes(p, 0xab, 40) };
        for new_size in [48, 200, 3000, 100] {
            p = unsafe { a.realloc(p, l, new_size) };
            let kept = l.size().min(new_size);
            let bytes = unsafe { std::slice::from_raw_parts(p, kept) };
            assert!(bytes.iter().all(|&b| b == 0xab));
            unsafe { ptr::write_bytes(p, 0xab, new_size) };
            l = layout(new_size, 8);
        }
        unsafe { a.dealloc(p, l) };
        for (p, l, _) in live {
            unsafe { a.dealloc(p, l) };
        }
    }
}
