use super::write::upstream_rank;
use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// A file from a header JSON and a data buffer of `data_len` zero bytes.
fn file(json: &str, data_len: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

fn entry(dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
}

fn one(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#"{{"{name}":{}}}"#, entry(dtype, shape, begin, end))
}

fn ok(json: &str, data_len: usize) -> Header {
    match parse(&file(json, data_len)) {
        Ok(h) => h,
        Err(e) => panic!("rejected {json}: {e}"),
    }
}

fn err(json: &str, data_len: usize) -> SafetensorsError {
    match parse(&file(json, data_len)) {
        Ok(h) => panic!("accepted {json}: {h:?}"),
        Err(e) => e,
    }
}

#[test]
fn minimal_valid_file() {
    let h = ok(&one("w", "F32", "[2,3]", 0, 24), 24);
    assert_eq!(h.tensors.len(), 1);
    let t = &h.tensors[0];
    assert_eq!(
        (t.name.as_str(), t.dtype, t.shape.as_slice(), t.begin, t.end),
        ("w", DType::F32, &[2u64, 3][..], 0, 24)
    );
    assert_eq!(h.header_len as usize, one("w", "F32", "[2,3]", 0, 24).len());
    assert_eq!(h.data_start(), 8 + h.header_len);
    assert_eq!(h.data_len(), 24);
    assert!(h.metadata.is_none());
}

#[test]
fn empty_object_is_a_valid_file() {
    let h = ok("{}", 0);
    assert!(h.tensors.is_empty());
    assert_eq!(h.header_len, 2);
    assert_eq!(h.data_len(), 0);
    let h = ok("{}      ", 0);
    assert_eq!(h.header_len, 8);
}

#[test]
fn zero_rank_and_empty_tensors() {
    let h = ok(&one("s", "F64", "[]", 0, 8), 8);
    assert!(h.tensors[0].shape.is_empty());
    let h = ok(&one("e", "F32", "[0,7]", 0, 0), 0);
    assert!(h.tensors[0].is_empty());
    // Zero-length tensors may share the offset of their neighbour.
    let json = format!(
        r#"{{"a":{},"b":{},"c":{},"d":{}}}"#,
        entry("U8", "[0]", 0, 0),
        entry("F32", "[1]", 0, 4),
        entry("I8", "[0,3]", 4, 4),
        entry("I8", "[0]", 4, 4)
    );
    let h = ok(&json, 4);
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

#[test]
fn tensors_come_back_sorted_by_offset() {
    let json = format!(
        r#"{{"z":{},"a":{},"m":{}}}"#,
        entry("U8", "[2]", 0, 2),
        entry("U8", "[3]", 5, 8),
        entry("U8", "[3]", 2, 5)
    );
    let h = ok(&json, 8);
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["z", "m", "a"]);
}

#[test]
fn every_dtype_parses() {
    for dtype in DType::ALL {
        let len = dtype.byte_len(&[8]).unwrap();
        let h = ok(&one("t", dtype.as_str(), "[8]", 0, len), len as usize);
        assert_eq!(h.tensors[0].dtype, dtype);
        assert_eq!(h.tensors[0].len(), len);
    }
}

#[test]
fn sub_byte_dtypes_must_fill_whole_bytes() {
    assert!(ok(&one("t", "F4", "[4]", 0, 2), 2).tensors[0].len() == 2);
    assert!(ok(&one("t", "F6_E2M3", "[4]", 0, 3), 3).tensors[0].len() == 3);
    assert!(matches!(
        err(&one("t", "F4", "[3]", 0, 2), 2),
        SafetensorsError::PartialByte {
            dtype: DType::F4,
            ..
        }
    ));
    assert!(matches!(
        err(&one("t", "F6_E3M2", "[1,3]", 0, 3), 3),
        SafetensorsError::PartialByte { .. }
    ));
}

#[test]
fn metadata_is_read() {
    let json = format!(
        r#"{{"__metadata__":{{"format":"pt","b":"x"}},"w":{}}}"#,
        entry("U8", "[1]", 0, 1)
    );
    let h = ok(&json, 1);
    let m = h.metadata.unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m["format"], "pt");
    assert_eq!(
        ok(r#"{"__metadata__":{}}"#, 0).metadata,
        Some(BTreeMap::new())
    );
}

// --- the 8-byte prefix ---

#[test]
fn file_shorter_than_prefix() {
    assert_eq!(
        parse(&[1, 0, 0]),
        Err(SafetensorsError::FileTooShort { len: 3 })
    );
    assert_eq!(parse(&[]), Err(SafetensorsError::FileTooShort { len: 0 }));
    assert_eq!(
        header_len(&[8, 0, 0, 0, 0, 0, 0, 0], 5),
        Err(SafetensorsError::FileTooShort { len: 5 })
    );
}

#[test]
fn zero_header_len() {
    assert_eq!(parse(&[0; 8]), Err(SafetensorsError::HeaderLenZero));
    assert_eq!(parse_header(b"", 8), Err(SafetensorsError::HeaderLenZero));
}

#[test]
fn huge_header_len_is_rejected_before_reading() {
    for n in [MAX_HEADER_LEN + 1, 1 << 40, u64::MAX - 7, u64::MAX] {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert_eq!(
            parse(&bytes),
            Err(SafetensorsError::HeaderTooLarge { len: n })
        );
        // Even when the caller claims an enormous file.
        assert_eq!(
            header_len(&bytes, u64::MAX),
            Err(SafetensorsError::HeaderTooLarge { len: n })
        );
    }
    assert_eq!(
        header_len(&MAX_HEADER_LEN.to_le_bytes(), u64::MAX),
        Ok(MAX_HEADER_LEN)
    );
}

#[test]
fn header_len_past_end_of_file() {
    let mut bytes = 100u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_eq!(
        parse(&bytes),
        Err(SafetensorsError::HeaderPastEnd {
            header_len: 100,
            file_len: 10
        })
    );
    assert_eq!(header_len(&bytes, 108), Ok(100));
    assert!(matches!(
        header_len(&bytes, 107),
        Err(SafetensorsError::HeaderPastEnd { .. })
    ));
    assert!(matches!(
        parse_header(b"{}", 9),
        Err(SafetensorsError::HeaderPastEnd { .. })
    ));
}

// --- the JSON text ---

#[test]
fn header_must_be_utf8() {
    let mut bytes = file(r#"{"a":1}"#, 0);
    bytes[10] = 0xff;
    assert_eq!(
        parse(&bytes),
        Err(SafetensorsError::HeaderNotUtf8 { valid_up_to: 2 })
    );
}

#[test]
fn header_must_start_with_brace() {
    for (json, found) in [
        (" {}", b' '),
        ("\n{}", b'\n'),
        ("[]", b'['),
        ("\u{feff}{}", 0xef),
    ] {
        assert_eq!(err(json, 0), SafetensorsError::HeaderStart { found });
    }
}

#[test]
fn padding_must_be_spaces() {
    ok("{}   ", 0);
    assert_eq!(
        err("{}\n", 0),
        SafetensorsError::BadPadding {
            offset: 2,
            found: b'\n'
        }
    );
    assert_eq!(
        err("{}\t  ", 0),
        SafetensorsError::BadPadding {
            offset: 2,
            found: b'\t'
        }
    );
    assert!(matches!(
        err("{} \r ", 0),
        SafetensorsError::BadPadding { found: b'\r', .. }
    ));
    assert_eq!(err("{}\0", 0), SafetensorsError::TrailingData);
    assert_eq!(err("{}\0   ", 0), SafetensorsError::TrailingData);
    assert_eq!(err("{} {}", 0), SafetensorsError::TrailingData);
    assert_eq!(err("{}\n}", 0), SafetensorsError::TrailingData);
}

#[test]
fn malformed_json() {
    for json in [r#"{"a":"#, "{", r#"{"a" 1}"#, "{,}", r#"{"a\ud800":1}"#] {
        assert!(
            matches!(err(json, 0), SafetensorsError::Json { .. }),
            "{json}"
        );
    }
}

// --- __metadata__ ---

#[test]
fn metadata_must_be_a_string_map() {
    for json in [
        r#"{"__metadata__":{"a":1}}"#,
        r#"{"__metadata__":{"a":null}}"#,
        r#"{"__metadata__":{"a":{"b":"c"}}}"#,
        r#"{"__metadata__":{"a":["b"]}}"#,
        r#"{"__metadata__":["a"]}"#,
        r#"{"__metadata__":"a"}"#,
        r#"{"__metadata__":null}"#,
    ] {
        assert!(
            matches!(err(json, 0), SafetensorsError::BadMetadata { .. }),
            "{json}: {:?}",
            err(json, 0)
        );
    }
}

// --- repeated keys ---

#[test]
fn duplicate_tensor_names() {
    let json = format!(
        r#"{{"a":{},"a":{}}}"#,
        entry("U8", "[4]", 0, 4),
        entry("U8", "[4]", 0, 4)
    );
    assert_eq!(
        err(&json, 4),
        SafetensorsError::DuplicateName { name: "a".into() }
    );
    // An escaped spelling of the same name is the same key.
    let json = format!(
        r#"{{"a":{},"\u0061":{}}}"#,
        entry("U8", "[2]", 0, 2),
        entry("U8", "[2]", 2, 4)
    );
    assert_eq!(
        err(&json, 4),
        SafetensorsError::DuplicateName { name: "a".into() }
    );
}

#[test]
fn duplicate_metadata() {
    assert_eq!(
        err(r#"{"__metadata__":{},"__metadata__":{}}"#, 0),
        SafetensorsError::DuplicateName {
            name: "__metadata__".into()
        }
    );
    assert_eq!(
        err(r#"{"__metadata__":{"k":"1","k":"2"}}"#, 0),
        SafetensorsError::DuplicateMetadataKey { key: "k".into() }
    );
}

#[test]
fn duplicate_fields_inside_an_entry() {
    for (json, field) in [
        (
            r#"{"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
            "dtype",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[1],"shape":[1],"data_offsets":[0,1]}}"#,
            "shape",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"data_offsets":[0,1]}}"#,
            "data_offsets",
        ),
    ] {
        assert_eq!(
            err(json, 1),
            SafetensorsError::DuplicateField {
                tensor: "a".into(),
                field: field.into()
            }
        );
    }
}

// --- entries ---

#[test]
fn unknown_and_missing_fields() {
    assert_eq!(
        err(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":0}}"#,
            1
        ),
        SafetensorsError::UnknownField {
            tensor: "a".into(),
            field: "extra".into()
        }
    );
    for (json, field) in [
        (r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#, "dtype"),
        (r#"{"a":{"dtype":"U8","data_offsets":[0,1]}}"#, "shape"),
        (r#"{"a":{"dtype":"U8","shape":[1]}}"#, "data_offsets"),
    ] {
        assert_eq!(
            err(json, 1),
            SafetensorsError::MissingField {
                tensor: "a".into(),
                field
            }
        );
    }
}

#[test]
fn entry_must_be_an_object() {
    for json in [
        r#"{"a":[1,2]}"#,
        r#"{"a":null}"#,
        r#"{"a":"F32"}"#,
        r#"{"a":3}"#,
    ] {
        assert!(
            matches!(err(json, 0), SafetensorsError::EntryNotObject { .. }),
            "{json}"
        );
    }
}

#[test]
fn unknown_dtype() {
    for dtype in [r#""F33""#, r#""f32""#, r#""""#, "32", "null", r#"["F32"]"#] {
        let json = format!(r#"{{"a":{{"dtype":{dtype},"shape":[1],"data_offsets":[0,4]}}}}"#);
        assert!(
            matches!(err(&json, 4), SafetensorsError::UnknownDType { .. }),
            "{json}"
        );
    }
}

#[test]
fn shape_must_be_non_negative_u64s() {
    for shape in [
        "[-1]",
        "[1.0]",
        "[1e0]",
        "[-0]",
        "[18446744073709551616]",
        r#"["1"]"#,
        "[null]",
        "[[1]]",
        "null",
        "3",
    ] {
        let json = format!(r#"{{"a":{{"dtype":"U8","shape":{shape},"data_offsets":[0,1]}}}}"#);
        assert!(
            matches!(err(&json, 1), SafetensorsError::BadShape { .. }),
            "{json}: {:?}",
            err(&json, 1)
        );
    }
    // The largest u64 is a fine dimension as long as the product fits.
    let max = u64::MAX;
    ok(&one("a", "U8", &format!("[{max},0]"), 0, 0), 0);
}

#[test]
fn offsets_must_be_two_u64s() {
    for offsets in [
        "[0]",
        "[]",
        "[0,1,1]",
        "[0,1,2,3]",
        "[-1,1]",
        "[0,1.5]",
        "[0,18446744073709551616]",
        r#"[0,"1"]"#,
        "null",
        r#"{"0":1}"#,
    ] {
        let json = format!(r#"{{"a":{{"dtype":"U8","shape":[1],"data_offsets":{offsets}}}}}"#);
        assert!(
            matches!(err(&json, 1), SafetensorsError::BadOffsets { .. }),
            "{json}: {:?}",
            err(&json, 1)
        );
    }
}

#[test]
fn inverted_offsets() {
    assert_eq!(
        err(&one("a", "U8", "[0]", 4, 0), 4),
        SafetensorsError::InvertedOffsets {
            tensor: "a".into(),
            begin: 4,
            end: 0
        }
    );
}

#[test]
fn overflowing_shapes() {
    let p = 1u64 << 62;
    for shape in [
        format!("[{p},{p}]"),
        format!("[{},2]", u64::MAX),
        format!("[{p}]"),
    ] {
        assert!(
            matches!(
                err(&one("a", "F64", &shape, 0, 8), 8),
                SafetensorsError::ShapeOverflow { .. }
            ),
            "{shape}"
        );
    }
}

#[test]
fn size_must_match_shape_and_dtype() {
    assert_eq!(
        err(&one("a", "F32", "[2]", 0, 4), 4),
        SafetensorsError::SizeMismatch {
            tensor: "a".into(),
            dtype: DType::F32,
            shape: vec![2],
            expected: 8,
            actual: 4
        }
    );
    assert!(matches!(
        err(&one("a", "F32", "[2]", 0, 12), 12),
        SafetensorsError::SizeMismatch { .. }
    ));
}

// --- layout of the data buffer ---

#[test]
fn first_tensor_must_start_at_zero() {
    assert_eq!(
        err(&one("a", "U8", "[4]", 4, 8), 8),
        SafetensorsError::Gap {
            tensor: "a".into(),
            expected: 0,
            begin: 4
        }
    );
}

#[test]
fn gap_between_tensors() {
    let json = format!(
        r#"{{"a":{},"b":{}}}"#,
        entry("U8", "[4]", 0, 4),
        entry("U8", "[4]", 6, 10)
    );
    assert_eq!(
        err(&json, 10),
        SafetensorsError::Gap {
            tensor: "b".into(),
            expected: 4,
            begin: 6
        }
    );
}

#[test]
fn overlapping_and_aliased_tensors() {
    let overlap = format!(
        r#"{{"a":{},"b":{}}}"#,
        entry("U8", "[4]", 0, 4),
        entry("U8", "[4]", 2, 6)
    );
    assert!(matches!(
        err(&overlap, 6),
        SafetensorsError::Overlap { previous, previous_end: 4, .. } if previous == "a"
    ));
    let alias = format!(
        r#"{{"a":{},"b":{}}}"#,
        entry("U8", "[4]", 0, 4),
        entry("I8", "[4]", 0, 4)
    );
    assert!(matches!(err(&alias, 4), SafetensorsError::Overlap { .. }));
    // A zero-length tensor pointing inside another one is not allowed either.
    let inside = format!(
        r#"{{"a":{},"b":{}}}"#,
        entry("U8", "[4]", 0, 4),
        entry("U8", "[0]", 2, 2)
    );
    assert!(matches!(err(&inside, 4), SafetensorsError::Overlap { .. }));
}

#[test]
fn trailing_bytes_after_last_tensor() {
    assert_eq!(
        err(&one("a", "U8", "[4]", 0, 4), 5),
        SafetensorsError::TrailingBytes {
            declared: 4,
            actual: 5,
            extra: 1
        }
    );
    assert!(matches!(
        err("{}", 1),
        SafetensorsError::TrailingBytes { .. }
    ));
}

#[test]
fn truncated_data() {
    assert_eq!(
        err(&one("a", "U8", "[4]", 0, 4), 3),
        SafetensorsError::Truncated {
            declared: 4,
            actual: 3
        }
    );
}

// --- names ---

#[test]
fn names_are_opaque_keys() {
    for name in ["../../etc/passwd", "/abs/path", "a\\\\b", "ünï cødé", "."] {
        let h = ok(&one(name, "U8", "[1]", 0, 1), 1);
        assert_eq!(
            h.tensors[0].name,
            name.replace("\\\\", "\\"),
            "names are kept verbatim"
        );
    }
}

#[test]
fn empty_names_are_rejected() {
    assert_eq!(
        err(&one("", "U8", "[1]", 0, 1), 1),
        SafetensorsError::EmptyName
    );
}

#[test]
fn nul_in_names_is_rejected() {
    assert_eq!(
        err(&one("a\\u0000b", "U8", "[1]", 0, 1), 1),
        SafetensorsError::NulInName {
            name: "a\0b".into()
        }
    );
}

#[test]
fn error_messages_name_the_rule() {
    let e = err(&one("w", "F32", "[2]", 0, 4), 4);
    assert_eq!(
        e.to_string(),
        r#"tensor "w": `data_offsets` span 4 bytes, but dtype F32 and shape [2] need 8"#
    );
    assert!(
        SafetensorsError::NulInName { name: "a\0".into() }
            .to_string()
            .contains("NUL")
    );
}

// --- writing ---

#[test]
fn serialize_matches_reference_bytes() {
    // The two vectors below are the reference package's own unit-test expectations.
    let out = serialize_header(&[("attn.0".into(), DType::F32, vec![1, 2, 3])], None).unwrap();
    let mut expected = 64u64.to_le_bytes().to_vec();
    expected
        .extend_from_slice(br#"{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}"#);
    assert_eq!(out, expected);

    let out = serialize_header(&[], None).unwrap();
    assert_eq!(out, b"\x08\0\0\0\0\0\0\0{}      ");

    let meta = BTreeMap::from([("framework".to_string(), "pt".to_string())]);
    let out = serialize_header(&[], Some(&meta)).unwrap();
    let mut expected = 40u64.to_le_bytes().to_vec();
    expected.extend_from_slice(br#"{"__metadata__":{"framework":"pt"}}     "#);
    assert_eq!(out, expected);
}

#[test]
fn serialize_pads_to_multiple_of_eight() {
    for len in 1..20 {
        let name = "x".repeat(len);
        let out = serialize_header(&[(name, DType::U8, vec![1])], None).unwrap();
        assert_eq!(out.len() % 8, 0);
        let n = u64::from_le_bytes(out[..8].try_into().unwrap());
        assert_eq!(n as usize, out.len() - 8);
        assert!(out.ends_with(b"}") || out.ends_with(b" "));
    }
}

#[test]
fn serialize_rejects_what_parse_rejects() {
    let t = |name: &str, dtype, shape: Vec<u64>| (name.to_string(), dtype, shape);
    assert_eq!(
        serialize_header(
            &[t("a", DType::U8, vec![1]), t("a", DType::U8, vec![1])],
            None
        ),
        Err(SafetensorsError::DuplicateName { name: "a".into() })
    );
    assert_eq!(
        serialize_header(&[t("", DType::U8, vec![1])], None),
        Err(SafetensorsError::EmptyName)
    );
    assert!(matches!(
        serialize_header(&[t("a\0", DType::U8, vec![1])], None),
        Err(SafetensorsError::NulInName { .. })
    ));
    assert_eq!(
        serialize_header(&[t("__metadata__", DType::U8, vec![1])], None),
        Err(SafetensorsError::ReservedName)
    );
    assert!(matches!(
        serialize_header(&[t("a", DType::F4, vec![3])], None),
        Err(SafetensorsError::PartialByte { .. })
    ));
    assert!(matches!(
        serialize_header(&[t("a", DType::F64, vec![1 << 62, 1 << 62])], None),
        Err(SafetensorsError::ShapeOverflow { .. })
    ));
    // Each tensor's length fits (byte_len bounds it below 2^61), but nine of them do not.
    let big: Vec<_> = (0..9)
        .map(|i| t(&i.to_string(), DType::U8, vec![(1 << 61) - 1]))
        .collect();
    assert_eq!(
        serialize_header(&big, None),
        Err(SafetensorsError::DataTooLarge)
    );
}

#[test]
fn upstream_order() {
    let mut ts: Vec<(String, DType, Vec<u64>)> = [
        ("c", DType::U8),
        ("b", DType::F32),
        ("a", DType::F32),
        ("z", DType::F64),
        ("y", DType::Bool),
        ("x", DType::C64),
        ("w", DType::U64),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d, vec![]))
    .collect();
    sort_like_upstream(&mut ts);
    let names: Vec<_> = ts.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["w", "z", "x", "a", "b", "c", "y"]);
    // Every dtype has its own rank.
    let ranks: BTreeSet<_> = DType::ALL.iter().map(|&d| upstream_rank(d)).collect();
    assert_eq!(ranks.len(), DType::ALL.len());
}

// --- properties ---

fn arb_dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn arb_tensors() -> impl Strategy<Value = Vec<(String, DType, Vec<u64>)>> {
    prop::collection::btree_map(
        "[^\\x00]{1,12}".prop_filter("reserved", |n| n != METADATA_KEY),
        (arb_dtype(), prop::collection::vec(0u64..6, 0..4)),
        0..8,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(name, (dtype, mut shape))| {
                // Sub-byte dtypes need an element count that fills whole bytes.
                if dtype.bits() % 8 != 0 {
                    shape.push(8);
                }
                (name, dtype, shape)
            })
            .collect()
    })
}

fn arb_metadata() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    prop::option::of(prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4))
}

fn assert_invariants(h: &Header, file_len: usize) {
    let mut cursor = 0;
    for t in &h.tensors {
        assert_eq!(t.begin, cursor, "contiguous and sorted");
        assert!(t.begin <= t.end);
        assert_eq!(t.dtype.byte_len(&t.shape), Ok(t.end - t.begin));
        assert!(!t.name.is_empty() && !t.name.contains('\0'));
        cursor = t.end;
    }
    assert_eq!(
        h.data_start() + cursor,
        file_len as u64,
        "ends at the file end"
    );
}

proptest! {
    #[test]
    fn serialize_then_parse_round_trips(
        tensors in arb_tensors(),
        metadata in arb_metadata(),
    ) {
        let prefix = serialize_header(&tensors, metadata.as_ref()).unwrap();
        prop_assert_eq!(prefix.len() % 8, 0);
        let data_len: u64 = tensors
            .iter()
            .map(|(_, d, s)| d.byte_len(s).unwrap())
            .sum();
        let mut bytes = prefix.clone();
        bytes.resize(prefix.len() + data_len as usize, 0);
        let h = parse(&bytes).unwrap();
        assert_invariants(&h, bytes.len());
        prop_assert_eq!(h.data_start() as usize, prefix.len());
        prop_assert_eq!(&h.metadata, &metadata);
        // Zero-length tensors keep their given order, so the whole list comes back as given.
        let back: Vec<_> = h
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        prop_assert_eq!(&back, &tensors);
        let mut offset = 0;
        for t in &h.tensors {
            prop_assert_eq!(t.begin, offset);
            offset = t.end;
        }
        // Writing the parsed header again gives the same bytes.
        let again = serialize_header(&back, h.metadata.as_ref()).unwrap();
        prop_assert_eq!(again, prefix);
    }

    #[test]
    fn mutated_files_never_panic(
        tensors in arb_tensors(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let prefix = serialize_header(&tensors, None).unwrap();
        let data_len: u64 = tensors.iter().map(|(_, d, s)| d.byte_len(s).unwrap()).sum();
        let mut bytes = prefix;
        bytes.resize(bytes.len() + data_len as usize, 0);
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
        }
        if let Ok(h) = parse(&bytes) {
            assert_invariants(&h, bytes.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(h) = parse(&bytes) {
            assert_invariants(&h, bytes.len());
        }
    }

    #[test]
    fn arbitrary_headers_never_panic(json in r#"\{[\[\]{}",:0-9a-zA-Z_ -]{0,80}"#, pad in 0usize..64) {
        let bytes = file(&json, pad);
        if let Ok(h) = parse(&bytes) {
            assert_invariants(&h, bytes.len());
        }
    }
}
