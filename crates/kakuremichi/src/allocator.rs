//! The process's allocator on Linux: mimalloc for ordinary blocks, and a mapping of its own for
//! every block of [`OWN_MAPPING`] or more.
//!
//! Every tunnelled TCP connection has two 256 KiB socket buffers, zeroed when they are made, and
//! the Agent two 64 KiB copy buffers. Mapped on their own, their untouched pages are never
//! resident (a fresh anonymous mapping reads as zeros without being written) and every page goes
//! back to the system the moment the connection ends. Measured with `scripts/bench --only
//! streams` (five rounds of 1,000 streams): mimalloc alone kept the Gateway at ~600 MiB and the
//! Agent at ~710 MiB, during the load and after it, because it zeroes a reused block by writing
//! it and keeps freed blocks resident; glibc's malloc maps such blocks on its own too, but its
//! per-thread arenas fragmented under blocks freed on another thread, and the Gateway's peak grew
//! from round to round (78 → 136 MiB). Smaller blocks stay with mimalloc, which does not
//! serialise threads the way musl's malloc does; [`start_collector`] has it give back what an
//! idle process no longer uses.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;
use std::time::Duration;

use mimalloc::MiMalloc;

/// Blocks this large or larger get a mapping of their own.
const OWN_MAPPING: usize = 64 * 1024;
/// Mappings are page-aligned; no page is smaller than this.
const MIN_PAGE: usize = 4096;

/// See the module documentation.
pub struct Allocator;

/// How often the `memory-trim` thread has mimalloc purge what has been free for a while.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Starts the `memory-trim` thread. mimalloc returns a freed page to the system once it has been
/// free for 100 ms, but only when some thread calls into it past that moment: a worker that goes
/// idle after a burst leaves it resident (measured: Gateway 88 MiB ten seconds after the load,
/// 25 MiB idle). The purge is process-wide, so one thread asking every second is enough; purging
/// at once instead (`MIMALLOC_PURGE_DELAY=0`) cost ~20 % more CPU per GiB in bulk transfers.
/// Called first thing in `main`.
pub fn start_collector() {
    let spawned = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(|| loop {
            std::thread::sleep(COLLECT_EVERY);
            collect();
        });
    if let Err(e) = spawned {
        eprintln!(
            "warning: cannot start the memory-trim thread ({e}); freed memory may stay resident"
        );
    }
}

/// Purges the pages that have been free long enough, process-wide.
fn collect() {
    // SAFETY: mi_collect has no preconditions; `false` purges only what has expired.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

fn mapped(size: usize, align: usize) -> bool {
    size >= OWN_MAPPING && align <= MIN_PAGE
}

/// A fresh private anonymous mapping of `size` bytes (zeros), or null.
unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: a new anonymous mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: blocks are told apart by their layout alone, which the caller passes unchanged to
// `dealloc` and `realloc`: a block of a mapped layout always came from `map` (or `mremap`), any
// other from mimalloc.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout.size(), layout.align()) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout.size(), layout.align()) {
            // SAFETY: see `map`; a fresh mapping is already zero.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if mapped(layout.size(), layout.align()) {
            // SAFETY: the block is a whole mapping of this size (see the impl's comment). munmap
            // fails only for arguments that are not such a mapping.
            unsafe {
                libc::munmap(block.cast(), layout.size());
            }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (mapped(layout.size(), align), mapped(new_size, align)) {
            // SAFETY: forwarded with the caller's guarantees.
            (false, false) => unsafe { MiMalloc.realloc(block, layout, new_size) },
            (true, true) => {
                // SAFETY: the block is a whole mapping of the old size; the kernel moves or grows it.
                let p = unsafe {
                    libc::mremap(block.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to `align`, fits in isize.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                // SAFETY: a non-zero size (one side is at least OWN_MAPPING, the other non-zero
                // by realloc's contract).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and do not overlap.
                    unsafe {
                        ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Resident pages of this process, in bytes.
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        pages * page
    }

    #[test]
    fn large_zeroed_blocks_cost_nothing_until_written_and_go_back_when_freed() {
        const BLOCK: usize = 256 * 1024;
        const COUNT: usize = 256; // 64 MiB
        const MIB: usize = 1 << 20;
        let layout = Layout::from_size_align(BLOCK, 8).unwrap();
        let before = resident();
        let blocks: Vec<*mut u8> = (0..COUNT)
            // SAFETY: a valid non-zero layout.
            .map(|_| unsafe { Allocator.alloc_zeroed(layout) })
            .collect();
        assert!(blocks.iter().all(|b| !b.is_null()));
        let untouched = resident();
        assert!(
            untouched < before + 16 * MIB,
            "64 MiB of zeroed blocks made {} MiB resident before a write",
            (untouched - before) / MIB
        );
        for &b in &blocks {
            // SAFETY: each block is BLOCK bytes, zeroed.
            let s = unsafe { std::slice::from_raw_parts_mut(b, BLOCK) };
            assert!(s.iter().step_by(4096).all(|&x| x == 0));
            s.fill(0xa5);
        }
        let written = resident();
        assert!(
            written > before + 48 * MIB,
            "the writes made nothing resident"
        );
        for b in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { Allocator.dealloc(b, layout) };
        }
        let freed = resident();
        assert!(
            freed + 48 * MIB < written,
            "freeing 64 MiB gave back only {} MiB",
            written.saturating_sub(freed) / MIB
        );
    }

    #[test]
    fn small_blocks_go_back_to_the_system_once_collected() {
        const MIB: usize = 1 << 20;
        let before = resident();
        let blocks: Vec<Box<[u8; 1024]>> = (0..64 * 1024).map(|_| Box::new([0x5a; 1024])).collect();
        let written = resident();
        assert!(
            written > before + 48 * MIB,
            "64 MiB of small blocks made nothing resident"
        );
        drop(blocks);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            collect();
            let freed = resident();
            if freed + 48 * MIB < written {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "freeing 64 MiB of small blocks gave back only {} MiB",
                written.saturating_sub(freed) / MIB
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_the_threshold_both_ways() {
        let mut v: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for size in [
            OWN_MAPPING - 1,
            OWN_MAPPING,
            3 * OWN_MAPPING + 5,
            10 * OWN_MAPPING,
        ] {
            let old = v.len();
            v.resize(size, 7);
            v.shrink_to_fit();
            assert!(v[..1000].iter().copied().eq((0..=255u8).cycle().take(1000)));
            assert!(v[old..].iter().all(|&x| x == 7));
        }
        for size in [2 * OWN_MAPPING, OWN_MAPPING, 100] {
            v.truncate(size);
            v.shrink_to_fit();
            assert!(v[..100].iter().copied().eq((0..=255u8).cycle().take(100)));
        }
        // A large alignment is not a page-aligned mapping's business: mimalloc serves it.
        let layout = Layout::from_size_align(OWN_MAPPING, 2 * 1024 * 1024).unwrap();
        // SAFETY: a valid non-zero layout; freed with it.
        unsafe {
            let p = Allocator.alloc(layout);
            assert!(!p.is_null() && (p as usize).is_multiple_of(layout.align()));
            Allocator.dealloc(p, layout);
        }
    }
}
