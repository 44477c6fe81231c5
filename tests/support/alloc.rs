//! A global allocator that counts allocations per thread, for exact
//! zero-allocation assertions. Install it in a binary with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator;`.
//!
//! The count is per thread so that other threads (the test harness's output
//! capture, a progress printer) cannot disturb a measurement, and nothing
//! done on the measured thread can hide from it.

// A global allocator is an `unsafe impl`; this one only forwards to the
// system allocator after bumping a thread-local counter.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts every allocation, reallocation and zeroed allocation per thread,
/// and the bytes they asked for.
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Allocations on every thread: for measuring a background thread the test
/// cannot run code on, in a process where nothing else runs meanwhile.
static EVERYWHERE: AtomicU64 = AtomicU64::new(0);

fn bump(size: usize) {
    EVERYWHERE.fetch_add(1, Ordering::Relaxed);
    // `try_with`: the thread-locals may already be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    let _ = BYTES.try_with(|n| n.set(n.get() + size as u64));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counter is a const-initialised thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations made on this thread so far (only counted where
/// `CountingAllocator` is the global allocator).
pub fn allocations_so_far() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Allocations made on every thread so far.
pub fn allocations_everywhere() -> u64 {
    EVERYWHERE.load(Ordering::Relaxed)
}

/// Bytes allocated on this thread so far (reallocations count their new
/// size), where `CountingAllocator` is the global allocator.
pub fn bytes_so_far() -> u64 {
    BYTES.with(Cell::get)
}

/// Allocations made on this thread by `f`, and its result.
pub fn count<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = allocations_so_far();
    let out = f();
    (allocations_so_far() - before, out)
}
