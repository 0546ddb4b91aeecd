//! Feed arbitrary bytes to the torch.save / TorchScript reader (the zip subset and the pickle
//! interpreter): it must never panic, never allocate more than the input bounds (each run's peak
//! heap is measured by a counting allocator), and whatever it accepts must cut the file into
//! segments that cover it exactly, with each storage where the archive says and of the size its
//! dtype and element count give.
#![no_main]

use cairn::formats::torchzip::{SegmentRange, parse_bytes, segments};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes live and the most live since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(live, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most heap one parse of `len` bytes may hold at once: every opcode and every zip entry
/// costs a bounded number of bytes of memory per input byte (the pickle's budget is
/// `PICKLE_MEMORY_BASE` + 2x its length, but an input this small can charge at most some tens
/// of bytes per byte); anything more means an allocation the bounds do not see.
fn heap_bound(len: usize) -> usize {
    (256 << 10) + 200 * len
}

fuzz_target!(|data: &[u8]| {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let parsed = parse_bytes(data);
    let used = PEAK.load(Relaxed) - before;
    assert!(
        used <= heap_bound(data.len()),
        "parsing {} bytes held {used} bytes of heap at once",
        data.len()
    );
    let Ok(z) = parsed else {
        return;
    };
    let file_len = data.len() as u64;
    // Storages: sorted, inside the payload area, of the size their dtype and count give.
    let mut prev_end = 0u64;
    for s in &z.storages {
        assert!(s.data_offset >= prev_end || s.size == 0, "storages overlap");
        let end = s.data_offset.checked_add(s.size).expect("storage end overflows");
        assert!(end <= z.central_dir_offset, "storage runs into the central directory");
        if let (Some(dtype), Some(numel)) = (s.dtype, s.numel) {
            assert_eq!(dtype.byte_len(&[numel]), Ok(s.size));
            if let Some(shape) = &s.shape {
                assert_eq!(shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)), Some(numel));
            }
        }
        prev_end = end;
    }
    // Segments: consecutive, non-empty, covering the file exactly; storage segments are the
    // storages' payloads.
    let mut cursor = 0u64;
    for seg in segments(&z, file_len) {
        assert_eq!(seg.start(), cursor, "segments leave a gap or overlap");
        assert!(seg.end() > seg.start(), "empty segment");
        if let SegmentRange::Storage { start, end, index } = seg {
            let s = &z.storages[index];
            assert_eq!((start, end), (s.data_offset, s.data_offset + s.size));
        }
        cursor = seg.end();
    }
    assert_eq!(cursor, file_len, "segments do not cover the file");
});
