use super::zip::{SIG_CENTRAL, SIG_EOCD, SIG_LOCAL};
use super::*;

/// A minimal STORED zip writer, torch-style (local FB padding to 64 bytes).
pub(crate) fn zip(entries: &[(&str, &[u8], u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, method) in entries {
        let offset = out.len() as u32;
        let fixed = 30 + name.len();
        let pad = (64 - (out.len() + fixed + 4) % 64) % 64;
        out.extend_from_slice(&SIG_LOCAL.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0]);
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&0x4246u16.to_le_bytes());
        out.extend_from_slice(&(pad as u16).to_le_bytes());
        out.resize(out.len() + pad, b'Z');
        out.extend_from_slice(data);
        central.extend_from_slice(&SIG_CENTRAL.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
        central.extend_from_slice(&method.to_le_bytes());
        central.extend_from_slice(&[0; 8]);
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&SIG_EOCD.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let n = entries.len() as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    out
}

/// `{'w': _rebuild_tensor_v2(('storage', torch.<class>, '0', 'cpu', numel), 0, shape, ...)}`
fn state_pickle(class: &str, numel: u8, shape: &[u8]) -> Vec<u8> {
    let stride: Vec<u32> = (0..shape.len())
        .map(|i| shape[i + 1..].iter().map(|&d| u32::from(d)).product())
        .collect();
    strided_pickle(class, numel, shape, &stride)
}

/// [`state_pickle`] with the view's strides given.
fn strided_pickle(class: &str, numel: u8, shape: &[u8], stride: &[u32]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'(', 0x8c, 1, b'w'];
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend_from_slice(b"(X\x07\0\0\0storage");
    p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
    p.extend_from_slice(b"X\x01\0\0\x000X\x03\0\0\0cpuK");
    p.push(numel);
    p.extend_from_slice(b"tQK\0(");
    for &d in shape {
        p.extend_from_slice(&[b'K', d]);
    }
    p.extend_from_slice(b"t(");
    for s in stride {
        p.push(b'J');
        p.extend_from_slice(&s.to_le_bytes());
    }
    p.extend_from_slice(b"t\x89}tRu.");
    p
}

fn archive(class: &str, numel: u8, shape: &[u8], data: &[u8]) -> Vec<u8> {
    let pkl = state_pickle(class, numel, shape);
    zip(&[
        ("a/data.pkl", &pkl, 0),
        ("a/data/0", data, 0),
        ("a/version", b"3\n", 0),
    ])
}

#[test]
fn minimal_archive() {
    let bytes = archive("FloatStorage", 6, &[2, 3], &[0; 24]);
    let z = parse_bytes(&bytes).unwrap();
    assert_eq!(z.stem, "a");
    assert_eq!(z.entries.len(), 3);
    assert_eq!(z.storages.len(), 1);
    let s = &z.storages[0];
    assert_eq!(
        (s.key.as_str(), s.dtype, s.numel, s.shape.as_deref()),
        ("0", Some(DType::F32), Some(6), Some(&[2u64, 3][..]))
    );
    assert_eq!(s.data_offset % 64, 0);
    let segs = segments(&z, bytes.len() as u64);
    assert_eq!(
        segs.iter().map(SegmentRange::len).sum::<u64>(),
        bytes.len() as u64
    );
    assert!(matches!(segs[1], SegmentRange::Storage { index: 0, .. }));
}

#[test]
fn only_row_major_views_give_the_storage_a_shape() {
    let shape_of = |shape: &[u8], stride: &[u32]| {
        let pkl = strided_pickle("FloatStorage", 6, shape, stride);
        let bytes = zip(&[("a/data.pkl", &pkl, 0), ("a/data/0", &[0; 24], 0)]);
        parse_bytes(&bytes).unwrap().storages[0].shape.clone()
    };
    assert_eq!(shape_of(&[2, 3], &[3, 1]), Some(vec![2, 3]));
    // A transpose covers the whole storage, which is laid out [2, 3], not [3, 2].
    assert_eq!(shape_of(&[3, 2], &[1, 3]), None);
    // Length-1 dimensions may carry any stride.
    assert_eq!(shape_of(&[1, 6], &[99, 1]), Some(vec![1, 6]));
    // A broadcast (stride 0) or a stride list of the wrong length says nothing.
    assert_eq!(shape_of(&[6], &[0]), None);
    assert_eq!(shape_of(&[6], &[1, 1]), None);
}

#[test]
fn storage_types_map_to_dtypes() {
    for (class, width, dtype) in [
        ("DoubleStorage", 8, Some(DType::F64)),
        ("HalfStorage", 2, Some(DType::F16)),
        ("BFloat16Storage", 2, Some(DType::BF16)),
        ("LongStorage", 8, Some(DType::I64)),
        ("IntStorage", 4, Some(DType::I32)),
        ("ShortStorage", 2, Some(DType::I16)),
        ("CharStorage", 1, Some(DType::I8)),
        ("ByteStorage", 1, Some(DType::U8)),
        ("BoolStorage", 1, Some(DType::Bool)),
        ("UntypedStorage", 1, None),
    ] {
        let bytes = archive(class, 4, &[4], &vec![0; 4 * width]);
        let z = parse_bytes(&bytes).unwrap();
        assert_eq!(z.storages[0].dtype, dtype, "{class}");
    }
}

#[test]
fn size_must_match_numel() {
    let bytes = archive("FloatStorage", 6, &[2, 3], &[0; 20]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::StorageSizeMismatch {
            expected: 24,
            size: 20,
            ..
        })
    ));
}

#[test]
fn missing_storage_entry() {
    let pkl = state_pickle("FloatStorage", 1, &[1]);
    let bytes = zip(&[("a/data.pkl", &pkl, 0)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::MissingStorage { .. })
    ));
}

#[test]
fn compressed_storage_and_pickle_are_rejected() {
    let pkl = state_pickle("ByteStorage", 1, &[1]);
    let bytes = zip(&[("a/data.pkl", &pkl, 0), ("a/data/0", b"x", 8)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::Compressed { method: 8, .. })
    ));
    let bytes = zip(&[("a/data.pkl", &pkl, 8), ("a/data/0", b"x", 0)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::Compressed { .. })
    ));
    // Other entries may be compressed: TorchScript deflates its code.
    let bytes = zip(&[
        ("a/data.pkl", &pkl, 0),
        ("a/data/0", b"x", 0),
        ("a/code/m.py", b"zz", 8),
    ]);
    assert!(parse_bytes(&bytes).is_ok());
}

#[test]
fn unreferenced_storages_have_no_dtype() {
    let pkl = state_pickle("ByteStorage", 1, &[1]);
    let bytes = zip(&[
        ("a/data.pkl", &pkl, 0),
        ("a/data/0", b"x", 0),
        ("a/data/extra", b"yyyy", 0),
        ("a/data/nested/no", b"z", 0),
    ]);
    let z = parse_bytes(&bytes).unwrap();
    let got: Vec<_> = z
        .storages
        .iter()
        .map(|s| (s.key.as_str(), s.dtype, s.numel))
        .collect();
    assert_eq!(
        got,
        [("0", Some(DType::U8), Some(1)), ("extra", None, None)]
    );
}

#[test]
fn untyped_storage_takes_the_dtype_of_a_v3_rebuild() {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v3\n(");
    p.extend_from_slice(b"(X\x07\0\0\0storagectorch\nUntypedStorage\n");
    p.extend_from_slice(b"X\x01\0\0\x000X\x03\0\0\0cpuK\x04tQ");
    p.extend_from_slice(b"K\0K\x02\x85K\x01\x85\x89}ctorch\nbfloat16\ntR.");
    let bytes = zip(&[("a/data.pkl", &p, 0), ("a/data/0", b"xxxx", 0)]);
    let z = parse_bytes(&bytes).unwrap();
    let s = &z.storages[0];
    assert_eq!(s.dtype, Some(DType::BF16));
    // UntypedStorage counts bytes: 4 bytes are 2 bfloat16 elements, the tensor's shape.
    assert_eq!(s.numel, Some(2));
    assert_eq!(s.shape.as_deref(), Some(&[2u64][..]));
}

#[test]
fn big_endian_storages_lose_their_dtype() {
    let pkl = state_pickle("FloatStorage", 1, &[1]);
    let bytes = zip(&[
        ("a/data.pkl", &pkl, 0),
        ("a/byteorder", b"big", 0),
        ("a/data/0", b"xxxx", 0),
    ]);
    let z = parse_bytes(&bytes).unwrap();
    assert!(!z.little_endian);
    assert_eq!(z.storages[0].dtype, None);
    assert_eq!(z.storages[0].numel, Some(1));
}

#[test]
fn names_need_one_stem_and_no_duplicates() {
    let pkl = state_pickle("ByteStorage", 1, &[1]);
    let bytes = zip(&[("a/data.pkl", &pkl, 0), ("b/data/0", b"x", 0)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::BadName { .. })
    ));
    let bytes = zip(&[
        ("a/data.pkl", &pkl, 0),
        ("a/data/0", b"x", 0),
        ("a/data/0", b"x", 0),
    ]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::DuplicateEntry { .. })
    ));
    let bytes = zip(&[("a/other.bin", b"x", 0)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::NoDataPickle)
    ));
}

#[test]
fn pickle_errors_are_typed() {
    for (pkl, what) in [
        (&b"\x80\x02"[..], "truncated"),
        (b"\x80\x02N.N", "trailing"),
        (b"\x80\x02.", "underflow"),
        (b"\x80\x02h\x05.", "empty memo"),
        (b"\x80\x02t.", "no mark"),
        (b"\x80\x02X\xff\xff\xff\xff.", "long string"),
    ] {
        let bytes = zip(&[("a/data.pkl", pkl, 0)]);
        assert!(
            matches!(parse_bytes(&bytes), Err(TorchZipError::Pickle { .. })),
            "{what}: {:?}",
            parse_bytes(&bytes)
        );
    }
    let bytes = zip(&[("a/data.pkl", b"\x80\x02i", 0)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::UnsupportedOpcode { opcode: b'i', .. })
    ));
    let bytes = zip(&[("a/data.pkl", b"\x80\x02(X\x01\0\0\0xtQ.", 0)]);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::BadPersistentId { .. })
    ));
}

#[test]
fn long_integers() {
    let m = |b: &[u8]| {
        let mut p = vec![0x80, 2, 0x8a, b.len() as u8];
        p.extend_from_slice(b);
        p.push(b'.');
        pickle::run(&p).map(|r| r.len())
    };
    assert!(m(&[]).is_ok());
    assert!(m(&[0xff; 12]).is_ok());
    assert!(m(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_ok());
}

#[test]
fn no_eocd() {
    assert!(matches!(
        parse_bytes(b""),
        Err(TorchZipError::NoEocd { .. })
    ));
    assert!(matches!(
        parse_bytes(&[0u8; 100]),
        Err(TorchZipError::NoEocd { .. })
    ));
    let mut bytes = archive("ByteStorage", 1, &[1], b"x");
    bytes.push(0);
    assert!(matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::TrailingBytes { extra: 1 })
    ));
}

/// Regression: a pickle nesting a tuple 300,000 levels deep (a 300 KB file) overflowed the
/// stack when the nested value was dropped, aborting `cairn commit`. Nesting is bounded by
/// `MAX_NESTING`: the archive is reported as unreadable (and a commit stores it opaque).
#[test]
fn deeply_nested_tuples_are_refused_not_a_stack_overflow() {
    let mut pkl = b"\x80\x02)".to_vec();
    pkl.extend(std::iter::repeat_n(0x85u8, 300_000));
    pkl.push(b'.');
    let bytes = zip(&[("a/data.pkl", &pkl, 0)]);
    let err = parse_bytes(&bytes).unwrap_err();
    assert!(matches!(err, TorchZipError::Pickle { .. }), "{err:?}");
    assert!(err.to_string().contains("nested deeper than"), "{err}");
    // Just under the bound parses (and drops) fine.
    let mut ok = b"\x80\x02)".to_vec();
    ok.extend(std::iter::repeat_n(
        0x85u8,
        (super::MAX_NESTING - 1) as usize,
    ));
    ok.push(b'.');
    let bytes = zip(&[("a/data.pkl", &ok, 0)]);
    assert!(!matches!(
        parse_bytes(&bytes),
        Err(TorchZipError::Pickle { .. })
    ));
}

/// What reading real torch.save pickles charges to the memory budget, per pickle byte: the
/// figure `PICKLE_MEMORY_PER_BYTE`'s documentation quotes (at most 18 bytes per byte), which
/// sets how large a legitimate pickle always fits.
#[test]
fn real_pickles_charge_at_most_18_bytes_per_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch");
    let mut worst = 0.0f64;
    let mut seen: Vec<String> = Vec::new();
    for name in [
        "real_optimizer.pt",
        "real_state_dict.pt",
        "real_lightning.ckpt",
        "state_dict.pt",
        "silero_vad.jit",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let z = parse_bytes(&bytes).unwrap();
        for e in z.entries.iter().filter(|e| e.name.ends_with(".pkl")) {
            let start = e.data_offset as usize;
            let pkl = &bytes[start..start + e.size as usize];
            let charged = pickle::charged(pkl).unwrap_or_else(|_| panic!("{name}: {}", e.name));
            let ratio = charged as f64 / pkl.len() as f64;
            seen.push(format!(
                "{name} {}: {} bytes, {ratio:.1}x",
                e.name,
                pkl.len()
            ));
            if pkl.len() > 400 {
                worst = worst.max(ratio);
            }
        }
    }
    assert!(worst > 0.0 && worst <= 18.0, "worst {worst:.1}x: {seen:#?}");
    // A 2 MiB pickle charged as much per byte as the worst of them fits its budget.
    let two_mib = f64::from(2u32 << 20);
    let limit = (PICKLE_MEMORY_BASE + PICKLE_MEMORY_PER_BYTE * (2 << 20)) as f64;
    assert!(worst * two_mib <= limit, "worst {worst:.1}x");
}

/// The properties the fuzz target checks, as property tests that run with `cargo test`: any
/// byte string either parses, and then its segments cover it exactly, or is refused with an
/// error (never a panic).
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn seed() -> Vec<u8> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/torchzip_parse");
        std::fs::read(dir.join("optimizer.pt")).unwrap()
    }

    fn check(bytes: &[u8]) {
        let Ok(z) = parse_bytes(bytes) else {
            return;
        };
        let mut cursor = 0u64;
        for seg in segments(&z, bytes.len() as u64) {
            assert_eq!(seg.start(), cursor);
            assert!(seg.end() > seg.start());
            cursor = seg.end();
        }
        assert_eq!(cursor, bytes.len() as u64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check(&bytes);
        }

        /// A real archive with bytes overwritten, a range cut out, or its tail cut off.
        #[test]
        fn damaged_archives_parse_or_are_refused(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in proptest::option::of((any::<prop::sample::Index>(), 0usize..64)),
            keep in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = seed();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some((at, n)) = cut {
                let i = at.index(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            if let Some(k) = keep {
                bytes.truncate(k.index(bytes.len() + 1));
            }
            check(&bytes);
        }
    }
}
