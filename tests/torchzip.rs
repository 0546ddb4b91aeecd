//! The torch zip reader (`cairn::formats::torchzip`) against real and torch-shaped archives.
//!
//! - `silero`: `tests/fixtures/torch/silero_vad.jit`, a TorchScript archive written by torch
//!   (from the `silero-vad` 6.2.3 wheel on PyPI, MIT licensed, see `silero_vad.LICENSE` there).
//! - `state_dict`: `state_dict.pt` and `state_dict_zip64.pt`, written by
//!   `tests/fixtures/torch/make_state_dict.py`. They are torch-format-shaped, NOT torch-written:
//!   Python's pickler with stand-in `torch` names and a hand-written zip that mirrors torch.save's
//!   layout (64-byte aligned payloads via local-header padding, ZIP64 end records in the second).
//! - `real`: `real_state_dict.pt`, `real_optimizer.pt`, `real_optimizer_step2.pt` and
//!   `real_lightning.ckpt`, unmodified torch.save output written once by PyTorch 2.15.0 with
//!   `tests/fixtures/torch/make_real.py`: no fallback, >= 99% of each file's bytes in storage
//!   segments, every dtype known.
//! - `malformed`: truncations, flipped header bytes, a compressed storage, overlapping and
//!   out-of-range entries give typed errors; a proptest mutates the fixtures and checks that
//!   parsing never panics and that whatever parses still tiles the file.

use cairn::formats::torchzip::{
    self, SegmentRange, TorchZip, TorchZipError, parse, parse_bytes, segments,
};
use cairn::model::dtype::DType;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture present")
}

/// Segments are contiguous, start at 0, end at the file end, and storage segments are exactly
/// the non-empty storages. Returns the bytes in storage segments.
fn assert_tiles(z: &TorchZip, file_len: u64) -> u64 {
    let segs = segments(z, file_len);
    let mut cursor = 0;
    let mut in_storage = 0;
    let mut seen = Vec::new();
    for s in &segs {
        assert_eq!(s.start(), cursor, "contiguous: {segs:?}");
        assert!(s.start() < s.end(), "no empty segment: {s:?}");
        cursor = s.end();
        if let SegmentRange::Storage { start, end, index } = *s {
            let st = &z.storages[index];
            assert_eq!((start, end), (st.data_offset, st.data_offset + st.size));
            in_storage += end - start;
            seen.push(index);
        }
    }
    assert_eq!(cursor, file_len, "segments end at the file end");
    let expected: Vec<usize> = (0..z.storages.len())
        .filter(|&i| z.storages[i].size > 0)
        .collect();
    assert_eq!(
        seen, expected,
        "one segment per non-empty storage, in order"
    );
    in_storage
}

mod silero {
    use super::*;

    #[test]
    fn parses_through_read_at_without_loading_the_file() {
        let path = fixture("silero_vad.jit");
        let mut f = std::fs::File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        let mut largest_read = 0usize;
        let z = parse(len, &mut |offset, buf| {
            largest_read = largest_read.max(buf.len());
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(buf)
        })
        .unwrap();
        assert_eq!(z, parse_bytes(&read_fixture("silero_vad.jit")).unwrap());
        // The largest read is the data.pkl pickle, not a storage.
        assert!(largest_read < 70_000, "{largest_read}");
    }

    #[test]
    fn entries_storages_and_coverage() {
        let bytes = read_fixture("silero_vad.jit");
        let z = parse_bytes(&bytes).unwrap();
        assert_eq!(z.stem, "VADr_v6_10_25_noths_re");
        assert_eq!(z.entries.len(), 126, "every entry of the central directory");
        assert!(z.little_endian);
        for pair in z.entries.windows(2) {
            assert!(pair[0].data_end() <= pair[1].header_offset);
        }
        // 32 `data/<n>` storages referenced from data.pkl and `constants/0` from constants.pkl.
        assert_eq!(z.storages.len(), 33);
        let data: Vec<_> = z
            .storages
            .iter()
            .filter(|s| s.entry.contains("/data/"))
            .collect();
        assert_eq!(data.len(), 32);
        for s in &z.storages {
            assert_eq!(s.dtype, Some(DType::F32), "{}", s.entry);
            assert_eq!(s.numel.map(|n| n * 4), Some(s.size), "{}", s.entry);
            assert_eq!(s.data_offset % 64, 0, "torch aligns payloads: {}", s.entry);
        }
        let s2 = z
            .storages
            .iter()
            .find(|s| s.entry.ends_with("/data/2"))
            .unwrap();
        assert_eq!(s2.shape.as_deref(), Some(&[258u64, 1, 256][..]));
        assert!(z.storages.iter().any(|s| s.entry.ends_with("/constants/0")));

        let in_storage = assert_tiles(&z, bytes.len() as u64);
        let fraction = in_storage as f64 / bytes.len() as f64;
        // TorchScript keeps its (deflated) code, debug pickles and the pickles next to the
        // weights: 2_181_128 of 2_272_526 bytes (95.98%) are storage bytes here.
        assert_eq!(in_storage, 2_181_128);
        assert!(fraction > 0.959, "{fraction}");
    }
}

mod state_dict {
    use super::*;

    fn check(z: &TorchZip) {
        assert_eq!(z.stem, "archive");
        assert_eq!(z.entries.len(), 7);
        let got: Vec<_> = z
            .storages
            .iter()
            .map(|s| {
                (
                    s.key.as_str(),
                    s.dtype,
                    s.numel,
                    s.shape.clone(),
                    s.size,
                    s.data_offset % 64,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("0", Some(DType::F32), Some(6), Some(vec![2, 3]), 24, 0),
                ("1", Some(DType::BF16), Some(4), Some(vec![4]), 8, 0),
                ("2", Some(DType::I64), Some(4), Some(vec![2, 2]), 32, 0),
            ]
        );
    }

    #[test]
    fn dtypes_shapes_and_bytes() {
        let bytes = read_fixture("state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        check(&z);
        assert_tiles(&z, bytes.len() as u64);
        let s = &z.storages[0];
        let start = s.data_offset as usize;
        let w: Vec<f32> = bytes[start..start + 24]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(w, [0.5, -1.0, 2.0, 3.25, 4.0, -5.5]);
        let s = &z.storages[2];
        let start = s.data_offset as usize;
        let last = i64::from_le_bytes(bytes[start + 24..start + 32].try_into().unwrap());
        assert_eq!(last, 1 << 40);
    }

    #[test]
    fn zip64_end_records() {
        let bytes = read_fixture("state_dict_zip64.pt");
        let z = parse_bytes(&bytes).unwrap();
        check(&z);
        assert_tiles(&z, bytes.len() as u64);
        let plain = parse_bytes(&read_fixture("state_dict.pt")).unwrap();
        assert_eq!(z.storages, plain.storages);
    }
}

mod real {
    use super::*;
    use std::collections::BTreeMap;

    type DTypeCounts = Vec<(DType, usize)>;

    /// The real torch.save fixtures, the stem torch gave each archive (the basename of the path
    /// it was saved to), and how many storages of each dtype the pickle declares.
    fn fixtures() -> Vec<(&'static str, &'static str, DTypeCounts)> {
        vec![
            (
                "real_state_dict.pt",
                "real_state_dict",
                vec![
                    (DType::Bool, 1),
                    (DType::U8, 1),
                    (DType::F16, 1),
                    (DType::BF16, 1),
                    (DType::F32, 11),
                    (DType::F64, 1),
                    (DType::I64, 1),
                ],
            ),
            ("real_optimizer.pt", "optimizer", vec![(DType::F32, 9)]),
            (
                "real_optimizer_step2.pt",
                "optimizer",
                vec![(DType::F32, 9)],
            ),
            (
                "real_lightning.ckpt",
                "real_lightning",
                vec![(DType::F32, 12)],
            ),
        ]
    }

    #[test]
    fn no_fallback_and_99_percent_storage_aligned() {
        for (name, stem, dtypes) in fixtures() {
            let bytes = read_fixture(name);
            let z = parse_bytes(&bytes).unwrap_or_else(|e| panic!("{name} falls back: {e}"));
            assert_eq!(z.stem, stem, "{name}");
            assert!(z.little_endian, "{name}");
            // Every `data/<n>` entry is a storage; nothing else is.
            let data_entries = z
                .entries
                .iter()
                .filter(|e| e.name.starts_with(&format!("{stem}/data/")))
                .count();
            assert_eq!(z.storages.len(), data_entries, "{name}");
            let mut by_dtype: BTreeMap<DType, usize> = BTreeMap::new();
            for s in &z.storages {
                let dtype = s
                    .dtype
                    .unwrap_or_else(|| panic!("{name}: {} has no dtype", s.entry));
                *by_dtype.entry(dtype).or_default() += 1;
                let numel = s.numel.expect("referenced from data.pkl");
                assert_eq!(dtype.byte_len(&[numel]).unwrap(), s.size, "{}", s.entry);
                assert_eq!(s.data_offset % 64, 0, "torch aligns payloads: {}", s.entry);
            }
            assert_eq!(by_dtype.into_iter().collect::<Vec<_>>(), dtypes, "{name}");
            // Storage segments, as commit plans them: what lands in storage-aligned chunks.
            let in_storage = assert_tiles(&z, bytes.len() as u64);
            let fraction = in_storage as f64 / bytes.len() as f64;
            eprintln!(
                "{name}: {in_storage} of {} bytes ({:.3}%) in storage-aligned segments",
                bytes.len(),
                fraction * 100.0
            );
            assert!(fraction >= 0.99, "{name}: {fraction}");
            // The segments, concatenated, are the file.
            let mut rebuilt = Vec::with_capacity(bytes.len());
            for s in segments(&z, bytes.len() as u64) {
                rebuilt.extend_from_slice(&bytes[s.start() as usize..s.end() as usize]);
            }
            assert!(rebuilt == bytes, "{name}: segments reassemble the file");
        }
    }

    /// Float storages are tagged with their float dtype, so commit picks the float codec.
    #[test]
    fn float_storages_carry_float_dtypes() {
        let bytes = read_fixture("real_state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        let floats = z
            .storages
            .iter()
            .filter(|s| s.dtype.is_some_and(DType::is_float))
            .count();
        assert_eq!(floats, 14, "F32 x11, BF16, F16, F64");
        for name in ["real_optimizer.pt", "real_lightning.ckpt"] {
            let z = parse_bytes(&read_fixture(name)).unwrap();
            assert!(
                z.storages
                    .iter()
                    .all(|s| s.dtype.is_some_and(DType::is_float)),
                "{name}"
            );
        }
    }

    /// What the static reader takes from the pickle: shapes of whole-storage tensors, the shared
    /// storage of two slices, the transposed view, the 0-dim scalar and the empty tensor.
    #[test]
    fn state_dict_shapes_from_the_pickle() {
        let bytes = read_fixture("real_state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        let shapes: Vec<(u64, Option<Vec<u64>>)> = z
            .storages
            .iter()
            .map(|s| (s.numel.unwrap(), s.shape.clone()))
            .collect();
        for want in [
            (640 * 128, Some(vec![640, 128])),  // embed.weight
            (256 * 128, Some(vec![256, 128])),  // proj.weight
            (16 * 8 * 5, Some(vec![16, 8, 5])), // conv.weight
            (1, Some(vec![])),                  // the 0-dim scalar
            (0, Some(vec![0, 16])),             // the empty tensor
            // The shared storage of two slices (offsets 0 and 3000): no whole-storage view.
            (8192, None),
            // The transposed view (size [96, 64], stride [1, 96]) covers its whole storage,
            // but the storage is laid out [64, 96]: a strided view gives no shape.
            (96 * 64, None),
        ] {
            assert!(shapes.contains(&want), "{want:?} in {shapes:?}");
        }
        // The empty tensor's storage is an empty entry: no segment, no chunk.
        assert!(z.storages.iter().any(|s| s.size == 0));
    }

    #[test]
    fn optimizer_steps_share_entry_names() {
        let a = parse_bytes(&read_fixture("real_optimizer.pt")).unwrap();
        let b = parse_bytes(&read_fixture("real_optimizer_step2.pt")).unwrap();
        let names = |z: &TorchZip| {
            z.storages
                .iter()
                .map(|s| (s.entry.clone(), s.dtype, s.size))
                .collect::<Vec<_>>()
        };
        // Same entries, dtypes and sizes, so each storage finds its parent by name.
        assert_eq!(names(&a), names(&b));
    }
}

mod malformed {
    use super::*;
    use proptest::prelude::*;

    const SIG_CENTRAL: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];

    /// Offsets of the central directory records, in order.
    fn central_records(bytes: &[u8], z: &TorchZip) -> Vec<usize> {
        let mut at = z.central_dir_offset as usize;
        let mut out = Vec::new();
        while bytes[at..].starts_with(&SIG_CENTRAL) {
            out.push(at);
            let u16_at = |i: usize| u16::from_le_bytes([bytes[at + i], bytes[at + i + 1]]) as usize;
            at += 46 + u16_at(28) + u16_at(30) + u16_at(32);
        }
        out
    }

    /// The central record of the entry whose name ends with `suffix`.
    fn central_of(bytes: &[u8], z: &TorchZip, suffix: &str) -> usize {
        *central_records(bytes, z)
            .iter()
            .find(|&&at| {
                let n = u16::from_le_bytes([bytes[at + 28], bytes[at + 29]]) as usize;
                bytes[at + 46..at + 46 + n].ends_with(suffix.as_bytes())
            })
            .unwrap()
    }

    fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = read_fixture("state_dict.pt");
        for len in 0..bytes.len() {
            assert!(parse_bytes(&bytes[..len]).is_err(), "truncated at {len}");
        }
        let bytes = read_fixture("silero_vad.jit");
        for len in (0..bytes.len())
            .step_by(9973)
            .chain(bytes.len() - 200..bytes.len())
        {
            assert!(parse_bytes(&bytes[..len]).is_err(), "truncated at {len}");
        }
    }

    #[test]
    fn flipped_header_bytes_never_panic() {
        for name in ["state_dict.pt", "state_dict_zip64.pt"] {
            let bytes = read_fixture(name);
            let z = parse_bytes(&bytes).unwrap();
            let mut header_bytes: Vec<usize> = z
                .entries
                .iter()
                .flat_map(|e| e.header_offset as usize..e.data_offset as usize)
                .collect();
            header_bytes.extend(z.central_dir_offset as usize..bytes.len());
            // The pickle too: every opcode and operand byte.
            let pkl = &z.entries[0];
            header_bytes.extend(pkl.data_offset as usize..pkl.data_end() as usize);
            for &i in &header_bytes {
                for mask in [0xff, 0x01, 0x80] {
                    let mut b = bytes.clone();
                    b[i] ^= mask;
                    if let Ok(z) = parse_bytes(&b) {
                        assert_tiles(&z, b.len() as u64);
                    }
                }
            }
        }
    }

    #[test]
    fn bad_signatures() {
        let bytes = read_fixture("state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        let mut b = bytes.clone();
        b[z.entries[2].header_offset as usize] ^= 0xff;
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::BadLocalHeader {
                what: "bad signature",
                ..
            })
        ));
        let mut b = bytes.clone();
        b[central_records(&bytes, &z)[3]] ^= 0xff;
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::BadCentralEntry { index: 3, .. })
        ));
        let mut b = bytes.clone();
        let n = b.len();
        b[n - 22] ^= 0xff;
        assert!(matches!(parse_bytes(&b), Err(TorchZipError::NoEocd { .. })));
    }

    #[test]
    fn compressed_storage() {
        let mut bytes = read_fixture("state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        let e = z
            .entries
            .iter()
            .find(|e| e.name == "archive/data/1")
            .unwrap();
        let local = e.header_offset as usize;
        let central = central_of(&bytes, &z, "/data/1");
        bytes[local + 8] = 8;
        bytes[central + 10] = 8;
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::Compressed { ref name, method: 8 }) if name == "archive/data/1"
        ));
    }

    #[test]
    fn overlapping_entries() {
        let mut bytes = read_fixture("state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        // Grow data/0 so its payload runs into the next local header.
        let central = central_of(&bytes, &z, "/data/0");
        set_u32(&mut bytes, central + 20, 100);
        set_u32(&mut bytes, central + 24, 100);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::Overlap { ref previous, .. }) if previous == "archive/data/0"
        ));
        // Two central records pointing at the same local header.
        let mut bytes = read_fixture("state_dict.pt");
        let c1 = central_of(&bytes, &z, "/data/1");
        let c0 = central_of(&bytes, &z, "/data/0");
        let off0 = bytes[c0 + 42..c0 + 46].to_vec();
        bytes[c1 + 42..c1 + 46].copy_from_slice(&off0);
        assert!(parse_bytes(&bytes).is_err());
    }

    #[test]
    fn entries_past_the_end_and_absurd_counts() {
        let bytes = read_fixture("state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        let central = central_of(&bytes, &z, "/data/2");
        let mut b = bytes.clone();
        set_u32(&mut b, central + 20, 0xffff_fff0);
        set_u32(&mut b, central + 24, 0xffff_fff0);
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::EntryPastEnd { .. })
        ));
        let mut b = bytes.clone();
        set_u32(&mut b, central + 42, 0x7fff_0000);
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::EntryPastEnd { .. })
        ));
        // EOCD entry counts of 0xfffe in a 7-entry directory.
        let mut b = bytes.clone();
        let n = b.len();
        b[n - 14..n - 10].copy_from_slice(&[0xfe, 0xff, 0xfe, 0xff]);
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::TooManyEntries { .. })
        ));
        // A central directory said to start past the end of the file.
        let mut b = bytes.clone();
        let n = b.len();
        set_u32(&mut b, n - 6, 0x7fff_ffff);
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::CentralDirOutOfBounds { .. })
        ));
        // Saturated fields without ZIP64 records.
        let mut b = bytes.clone();
        let n = b.len();
        set_u32(&mut b, n - 6, 0xffff_ffff);
        assert!(matches!(
            parse_bytes(&b),
            Err(TorchZipError::BadZip64 { .. })
        ));
    }

    #[test]
    fn storage_size_must_match_numel() {
        let mut bytes = read_fixture("state_dict.pt");
        let z = parse_bytes(&bytes).unwrap();
        // Shrink data/2 from 32 to 24 bytes; the gap becomes unaccounted padding, which is
        // allowed, but 4 int64 elements need 32 bytes.
        let central = central_of(&bytes, &z, "/data/2");
        set_u32(&mut bytes, central + 20, 24);
        set_u32(&mut bytes, central + 24, 24);
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::StorageSizeMismatch {
                expected: 32,
                size: 24,
                ..
            })
        ));
    }

    #[test]
    fn appended_bytes_and_comments() {
        let mut bytes = read_fixture("state_dict.pt");
        bytes.extend_from_slice(b"tail");
        assert!(matches!(
            parse_bytes(&bytes),
            Err(TorchZipError::TrailingBytes { extra: 4 })
        ));
    }

    #[test]
    fn io_errors_are_reported() {
        let bytes = read_fixture("state_dict.pt");
        let r = parse(bytes.len() as u64, &mut |_, _| {
            Err(std::io::Error::other("disk on fire"))
        });
        assert!(matches!(r, Err(TorchZipError::Io { .. })));
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 | 1 => bytes[i] = *byte,
                2 => bytes.insert(i, *byte),
                3 => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
        }
        bytes
    }

    proptest! {
        #[test]
        fn mutated_state_dicts_never_panic(
            zip64 in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..5), 1..6),
        ) {
            let name = if zip64 { "state_dict_zip64.pt" } else { "state_dict.pt" };
            let bytes = mutate(read_fixture(name), &edits);
            if let Ok(z) = parse_bytes(&bytes) {
                assert_tiles(&z, bytes.len() as u64);
            }
        }

        #[test]
        fn mutated_silero_headers_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..2), 1..6),
        ) {
            // Mutate the last 40 KiB (pickles, code, central directory), where the structure is.
            let full = read_fixture("silero_vad.jit");
            let split = full.len() - 40_000;
            let tail = mutate(full[split..].to_vec(), &edits);
            let mut bytes = full[..split].to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(z) = parse_bytes(&bytes) {
                assert_tiles(&z, bytes.len() as u64);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(z) = parse_bytes(&bytes) {
                assert_tiles(&z, bytes.len() as u64);
            }
        }
    }
}

#[test]
fn dtype_tables() {
    assert_eq!(torchzip::storage_dtype("FloatStorage"), Some(DType::F32));
    assert_eq!(torchzip::storage_dtype("UntypedStorage"), None);
    assert_eq!(torchzip::torch_dtype("bfloat16"), Some(DType::BF16));
}
