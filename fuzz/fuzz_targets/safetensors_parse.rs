//! Feed arbitrary bytes to the safetensors parser: it must never panic, never allocate beyond
//! what the input bounds, and whatever it accepts must satisfy the header invariants.
#![no_main]

use cairn::formats::safetensors::{Header, parse, serialize_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = parse(data) else {
        return;
    };
    check(&header, data);
});

fn check(header: &Header, data: &[u8]) {
    let file_len = data.len() as u64;
    assert!(header.header_len > 0 && header.header_len <= cairn::formats::safetensors::MAX_HEADER_LEN);
    // Sorted, contiguous from 0, no overlap, and every range the exact size of its tensor.
    let mut cursor = 0u64;
    for t in &header.tensors {
        assert_eq!(
            t.begin, cursor,
            "tensor {:?} does not start where the previous ended",
            t.name
        );
        assert!(t.begin <= t.end);
        assert_eq!(t.dtype.byte_len(&t.shape), Ok(t.end - t.begin));
        assert!(!t.name.is_empty() && !t.name.contains('\0'));
        cursor = t.end;
    }
    // The last tensor ends exactly at the end of the file.
    assert_eq!(header.data_start().checked_add(cursor), Some(file_len));

    // The writer accepts whatever the parser accepts, and its output parses to the same tensors.
    let tensors: Vec<_> = header
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let prefix = serialize_header(&tensors, header.metadata.as_ref())
        .expect("an accepted header can be written again");
    let mut rewritten = prefix;
    rewritten.extend_from_slice(&data[header.data_start() as usize..]);
    let again = parse(&rewritten).expect("a written header parses");
    assert_eq!(again.tensors.len(), header.tensors.len());
    for (a, b) in again.tensors.iter().zip(&header.tensors) {
        assert_eq!(
            (&a.name, a.dtype, &a.shape, a.begin, a.end),
            (&b.name, b.dtype, &b.shape, b.begin, b.end)
        );
    }
    assert_eq!(again.metadata, header.metadata);
}
