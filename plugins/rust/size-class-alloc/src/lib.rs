//! A small, fast global allocator for single-threaded WebAssembly plugins.
//!
//! Every hook call passes its arguments through the canonical ABI: the host calls the
//! plugin's `cabi_realloc` once per string and list (an event id, each header name and value,
//! the body), and the generated bindings free them all again when the call returns. With the
//! standard library's default allocator on `wasm32-wasip2` (dlmalloc), those dozen or more
//! `malloc`/`free` pairs were about a sixth of a signer call (`cargo bench -p squall --bench
//! plugins`, see docs/benchmarks.md). This allocator serves them from per-size free lists:
//!
//! - a request of at most [`MAX_SMALL`] bytes and alignment at most 16 is rounded up to a power
//!   of two (16 B .. 32 KiB, twelve classes); a freed block goes onto its class's free list and
//!   is handed out again by the next request of that class, in constant time;
//! - fresh blocks are carved from 64 KiB chunks taken from the system allocator;
//! - larger or more aligned requests go to the system allocator unchanged.
//!
//! Small blocks are never returned to the system allocator: a plugin's memory grows to the
//! largest working set a call needs, and stays there, within the host's memory limit.
//!
//! Use it in a plugin crate with
//! `#[global_allocator] static ALLOC: size_class_alloc::SizeClassAlloc = size_class_alloc::SizeClassAlloc::new();`
//!
//! It is only sound where there is one thread, as in a WebAssembly component instance; on any
//! other target the type is not `Sync` and the declaration above does not compile.

use std::alloc::{GlobalAlloc, Layout, System};
use core::cell::UnsafeCell;
use core::ptr;

/// Largest request served from the size classes, bytes.
pub const MAX_SMALL: usize = 32 * 1024;
const MIN_SHIFT: u32 = 4; // 16 bytes
const CLASSES: usize = 12; // 16 B ..= 32 KiB
const CHUNK: usize = 64 * 1024;
const ALIGN: usize = 16;

struct State {
    /// Head of each class's free list; a free block stores the next pointer in its first word.
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    bump: *mut u8,
    end: *mut u8,
}

/// The allocator. See the crate documentation.
pub struct SizeClassAlloc {
    state: UnsafeCell<State>,
}

impl SizeClassAlloc {
    /// An allocator with no memory yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        SizeClassAlloc {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
        }
    }
}

// SAFETY: a WebAssembly component instance runs one thread; nothing else can reach `state`.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClassAlloc {}

/// The size class of `layout`, or `None` for the system allocator.
#[inline]
fn class(layout: &Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > ALIGN {
        return None;
    }
    let size = layout.size().max(1 << MIN_SHIFT);
    Some((size.next_power_of_two().trailing_zeros() - MIN_SHIFT) as usize)
}

#[inline]
fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

unsafe impl GlobalAlloc for SizeClassAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(&layout) else {
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded (see the `Sync` impl), and no reference to `state` outlives
        // this call.
        let st = unsafe { &mut *self.state.get() };
        let head = st.free[c];
        if !head.is_null() {
            // SAFETY: `head` is a free block of this class; its first word is the next link.
            st.free[c] = unsafe { *(head as *mut *mut u8) };
            return head;
        }
        let size = class_size(c);
        if (st.end as usize) - (st.bump as usize) < size {
            // The rest of the old chunk (less than one block of this class) is left unused.
            // SAFETY: a valid, non-zero layout.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN)) };
            if chunk.is_null() {
                return ptr::null_mut();
            }
            st.bump = chunk;
            // SAFETY: `chunk` is CHUNK bytes long.
            st.end = unsafe { chunk.add(CHUNK) };
        }
        let block = st.bump;
        // SAFETY: at least `size` bytes remain before `end`.
        st.bump = unsafe { block.add(size) };
        block
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let Some(c) = class(&layout) else {
            return unsafe { System.dealloc(p, layout) };
        };
        // SAFETY: as in `alloc`; `p` came from `alloc` with a layout of the same class (the
        // GlobalAlloc contract), so it is a block of at least 16 bytes, 16-aligned.
        let st = unsafe { &mut *self.state.get() };
        unsafe { *(p as *mut *mut u8) = st.free[c] };
        st.free[c] = p;
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the GlobalAlloc contract for `realloc`: `new_size` rounded up to `align`
        // does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(&layout), class(&new_layout)) {
            // Still fits the block it has.
            (Some(a), Some(b)) if a == b => p,
            (None, None) => unsafe { System.realloc(p, layout, new_size) },
            _ => {
                let q = unsafe { self.alloc(new_layout) };
                if !q.is_null() {
                    // SAFETY: both blocks hold at least the smaller of the two sizes.
                    unsafe {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                }
                q
            }
        }
    }
}
