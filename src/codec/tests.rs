use super::planes::{TRANSFORM_NONE, TRANSFORM_ORDERED_DIFF, encode_planes, plane_layout};
use super::*;
use proptest::prelude::*;

/// splitmix64: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f64 {
        let u = ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Little-endian bytes of `values` as `dtype` (floats), or their bits as an integer type.
fn to_bytes(dtype: DType, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        match dtype {
            DType::F32 => out.extend((v as f32).to_le_bytes()),
            DType::F64 => out.extend(v.to_le_bytes()),
            DType::BF16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
            DType::F16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            _ => out.extend((v as f32).to_le_bytes()),
        }
    }
    out
}

fn weights(dtype: DType, bytes: usize, rng: &mut Rng) -> Vec<f64> {
    let w = dtype.byte_width().unwrap_or(1).max(1);
    (0..bytes.div_ceil(w))
        .map(|_| rng.normal() * 0.02)
        .collect()
}

/// Test data of one kind: 0 weights, 1 random bytes, 2 mostly zeros, 3 Adam second moments.
fn data(dtype: DType, len: usize, kind: u8, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = match kind {
        0 => to_bytes(dtype, &weights(dtype, len, &mut rng)),
        1 => rng.bytes(len),
        2 => {
            let mut v = weights(dtype, len, &mut rng);
            for (i, x) in v.iter_mut().enumerate() {
                if (i / 64) % 8 != 3 {
                    *x = 0.0;
                }
            }
            to_bytes(dtype, &v)
        }
        _ => {
            let v: Vec<f64> = weights(dtype, len, &mut rng)
                .iter()
                .map(|x| x * x * 0.01)
                .collect();
            to_bytes(dtype, &v)
        }
    };
    out.resize(len, 0xA5);
    out
}

/// A small optimizer step of `raw` interpreted as `dtype`: every element moves by about
/// `lr` times a unit normal.
fn step(dtype: DType, raw: &[u8], lr: f64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = raw.to_vec();
    match dtype {
        DType::F32 => {
            for c in out.chunks_exact_mut(4) {
                let x = f32::from_le_bytes(c.try_into().unwrap()) as f64;
                c.copy_from_slice(&((x - lr * rng.normal()) as f32).to_le_bytes());
            }
        }
        DType::BF16 => {
            for c in out.chunks_exact_mut(2) {
                let x = half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64();
                c.copy_from_slice(&half::bf16::from_f64(x - lr * rng.normal()).to_le_bytes());
            }
        }
        _ => unreachable!("test steps are f32 or bf16"),
    }
    out
}

/// Every encoding that applies to `raw`, forced regardless of what pays.
fn forced(raw: &[u8], dtype: DType, base: &[u8], mask: u8) -> Vec<(Encoding, Vec<u8>)> {
    let mut all = vec![
        (Encoding::Raw, raw.to_vec()),
        (
            Encoding::Zstd,
            zstd::bulk::compress(raw, ZSTD_LEVEL).unwrap(),
        ),
    ];
    let xor: Vec<u8> = raw.iter().zip(base).map(|(a, b)| a ^ b).collect();
    all.push((Encoding::XorZstd, zstd::bulk::compress(&xor, 3).unwrap()));
    if let Some(w @ (2 | 4 | 8)) = dtype.byte_width() {
        let transform = plane_layout(dtype).map_or(TRANSFORM_NONE, |l| l.transform);
        let mask = mask & ((1u16 << w) - 1) as u8;
        if raw.len() >= w {
            all.push((
                Encoding::Planes,
                encode_planes(raw, None, w, transform, mask, Vec::new()),
            ));
            let delta = encode_planes(raw, Some(base), w, TRANSFORM_ORDERED_DIFF, mask, Vec::new());
            all.push((Encoding::DeltaPlanes, delta));
        }
    }
    all
}

fn ratio(raw: &[u8], e: &Encoded) -> f64 {
    match e.encoding {
        Encoding::Raw => 1.0,
        _ => raw.len() as f64 / e.bytes.len() as f64,
    }
}

fn dtypes() -> impl Strategy<Value = DType> {
    (0..DType::ALL.len()).prop_map(|i| DType::ALL[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_encoding_round_trips(
        dtype in dtypes(), len in 0usize..3000, kind in 0u8..4, seed: u64, mask: u8,
    ) {
        let raw = data(dtype, len, kind, seed);
        let base = data(dtype, len, kind, seed ^ 1);
        for (enc, bytes) in forced(&raw, dtype, &base, mask) {
            let got = decode(enc, &bytes, len as u64, Some(&base));
            prop_assert_eq!(got.ok(), Some(raw.clone()), "{:?}", enc);
        }
    }

    #[test]
    fn chosen_encoding_round_trips_and_never_grows(
        dtype in proptest::option::of(dtypes()), len in 0usize..40_000, kind in 0u8..4,
        seed: u64, base_kind in 0u8..4,
    ) {
        let dt = dtype.unwrap_or(DType::U8);
        let raw = data(dt, len, kind, seed);
        let base = match base_kind {
            0 => None,
            1 => Some(data(dt, len, kind, seed ^ 1)),
            2 if matches!(dt, DType::F32 | DType::BF16) => Some(step(dt, &raw, 1e-4, seed)),
            2 => Some(raw.iter().map(|b| b ^ u8::from(b % 7 == 0)).collect()),
            _ => Some(data(dt, len / 2, kind, seed)),
        };
        let e = encode(&raw, Hint { dtype, base: base.as_deref() });
        if e.encoding == Encoding::Raw {
            prop_assert!(e.bytes.is_empty());
        } else {
            prop_assert!(e.bytes.len() < raw.len());
        }
        prop_assert_eq!(e.used_base, e.encoding.needs_base());
        let stored = if e.encoding == Encoding::Raw { &raw } else { &e.bytes };
        let base = base.as_deref().filter(|_| e.used_base);
        let got = decode(e.encoding, stored, len as u64, base).unwrap();
        prop_assert_eq!(got, raw);
    }

    #[test]
    fn corrupt_stored_bytes_never_panic(
        dtype in dtypes(), len in 0usize..3000, kind in 0u8..4, seed: u64, mask: u8,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..4),
        len_delta in -2i64..3,
    ) {
        let raw = data(dtype, len, kind, seed);
        let base = data(dtype, len, kind, seed ^ 1);
        for (enc, mut bytes) in forced(&raw, dtype, &base, mask) {
            for &(at, v, op) in &edits {
                let at = if bytes.is_empty() { 0 } else { at % bytes.len() };
                match op {
                    0 if !bytes.is_empty() => bytes[at] ^= v | 1,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, v),
                    _ if !bytes.is_empty() => {
                        let i = at.min(7) % bytes.len();
                        bytes[i] = v;
                    }
                    _ => {}
                }
            }
            let want = (len as i64 + len_delta).max(0) as u64;
            for b in [Some(&base[..]), None, Some(&base[..base.len() / 2])] {
                if let Ok(out) = decode(enc, &bytes, want, b) {
                    prop_assert_eq!(out.len() as u64, want);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// A delta chain applied in one go (fused when every link is byte planes) gives what
    /// decoding link by link gives, whatever the lengths, widths and masks; corrupt links
    /// are errors, never panics.
    #[test]
    fn delta_chains_decode_like_link_by_link(
        dtype in dtypes(), len in 0usize..5000, seed: u64,
        links in proptest::collection::vec((any::<u8>(), 0u8..8), 1..5),
        corrupt in proptest::option::of((any::<usize>(), 1u8..=255)),
    ) {
        let mut versions = vec![data(dtype, len, 1, seed)];
        let mut deltas = Vec::new();
        for (i, &(mask, pick)) in links.iter().enumerate() {
            let prev = versions.last().unwrap().clone();
            let next = data(dtype, len, 1, seed ^ (i as u64 + 1));
            let forced = forced(&next, dtype, &prev, mask);
            // Mostly byte planes (the fused path), sometimes an XOR link (the fallback).
            let want = if pick == 0 { Encoding::XorZstd } else { Encoding::DeltaPlanes };
            let (enc, bytes) = forced
                .into_iter()
                .find(|(e, _)| *e == want)
                .unwrap_or((Encoding::XorZstd, Vec::new()));
            let bytes = if bytes.is_empty() && enc == Encoding::XorZstd {
                let xor: Vec<u8> = next.iter().zip(&prev).map(|(a, b)| a ^ b).collect();
                zstd::bulk::compress(&xor, 3).unwrap()
            } else {
                bytes
            };
            deltas.push((enc, bytes));
            versions.push(next);
        }
        let mut out = versions[0].clone();
        let links: Vec<(Encoding, &[u8])> =
            deltas.iter().map(|(e, b)| (*e, b.as_slice())).collect();
        apply_deltas_into(&links, &mut out).unwrap();
        prop_assert_eq!(&out, versions.last().unwrap());

        if let Some((at, flip)) = corrupt {
            let mut bad = deltas.clone();
            let which = at % bad.len();
            if !bad[which].1.is_empty() {
                let i = at % bad[which].1.len();
                bad[which].1[i] ^= flip;
            }
            let links: Vec<(Encoding, &[u8])> =
                bad.iter().map(|(e, b)| (*e, b.as_slice())).collect();
            let mut out = versions[0].clone();
            let _ = apply_deltas_into(&links, &mut out);
            prop_assert_eq!(out.len(), len);
        }
    }
}

/// A spent buffer handed to `encode_into`, whatever it holds, changes nothing but where
/// the bytes live: the same encoding and bytes as `encode`, and empty bytes for Raw.
#[test]
fn encode_into_a_dirty_buffer_equals_encode() {
    for (i, dtype) in [DType::F32, DType::BF16, DType::F64, DType::U8, DType::I64]
        .into_iter()
        .enumerate()
    {
        for kind in 0u8..4 {
            let raw = data(dtype, 70_000, kind, i as u64);
            let base = data(dtype, 70_000, kind, i as u64 + 100);
            for base in [None, Some(&base[..])] {
                let hint = Hint {
                    dtype: Some(dtype),
                    base,
                };
                let want = encode(&raw, hint);
                let got = encode_into(&raw, hint, vec![0xAB; 1 << 20]);
                assert_eq!(got.encoding, want.encoding, "{dtype:?} {kind}");
                assert_eq!(got.bytes, want.bytes, "{dtype:?} {kind}");
                assert_eq!(got.used_base, want.used_base);
                if got.encoding == Encoding::Raw {
                    assert!(got.bytes.is_empty());
                }
            }
        }
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let random: Vec<u8> = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let e = encode_into(&random, Hint::default(), vec![1; 4096]);
    assert_eq!((e.encoding, e.bytes.len()), (Encoding::Raw, 0));
}

#[test]
fn a_chain_link_that_is_not_a_delta_is_an_error() {
    let mut out = vec![0u8; 8];
    let err = apply_deltas_into(&[(Encoding::Raw, &[1u8; 8][..])], &mut out).unwrap_err();
    assert!(err.to_string().contains("not a delta"), "{err}");
}

#[test]
fn codes_round_trip() {
    for (i, e) in Encoding::ALL.iter().enumerate() {
        assert_eq!(usize::from(e.code()), i);
        assert_eq!(Encoding::from_code(e.code()), Some(*e));
    }
    assert_eq!(Encoding::from_code(5), None);
    assert!(Encoding::DeltaPlanes.needs_base() && Encoding::XorZstd.needs_base());
    assert!(!Encoding::Raw.needs_base() && !Encoding::Planes.needs_base());
}

#[test]
fn zstd_and_raw_round_trip() {
    let zeros = vec![0u8; 1 << 20];
    let e = encode(&zeros, Hint::default());
    assert_eq!(e.encoding, Encoding::Zstd);
    assert_eq!(
        decode(e.encoding, &e.bytes, zeros.len() as u64, None).unwrap(),
        zeros
    );

    let noise = Rng(7).bytes(1 << 20);
    for dtype in [None, Some(DType::F32), Some(DType::BF16), Some(DType::F64)] {
        let e = encode(&noise, Hint { dtype, base: None });
        assert_eq!(e.encoding, Encoding::Raw, "{dtype:?}");
    }
}

#[test]
fn corrupt_frames_are_errors() {
    let e = encode(&vec![7u8; 10_000], Hint::default());
    let mut bad = e.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xFF;
    let r = decode(Encoding::Zstd, &bad, 10_000, None);
    assert!(r.is_err() || r.unwrap() != vec![7u8; 10_000]);
    assert!(decode(Encoding::Zstd, &e.bytes, 9_999, None).is_err());
    assert!(matches!(
        decode(Encoding::Zstd, &e.bytes, u64::MAX, None),
        Err(CodecError::TooLarge(_))
    ));
    assert!(matches!(
        decode(Encoding::Raw, &[1, 2, 3], 4, None),
        Err(CodecError::Length { got: 3, want: 4 })
    ));
}

#[test]
fn delta_needs_its_base() {
    let raw = data(DType::F32, 1 << 20, 0, 1);
    let base = step(DType::F32, &raw, 1e-4, 2);
    let e = encode(
        &raw,
        Hint {
            dtype: Some(DType::F32),
            base: Some(&base),
        },
    );
    assert_eq!(e.encoding, Encoding::DeltaPlanes);
    assert!(matches!(
        decode(e.encoding, &e.bytes, raw.len() as u64, None),
        Err(CodecError::MissingBase(Encoding::DeltaPlanes))
    ));
    assert!(matches!(
        decode(e.encoding, &e.bytes, raw.len() as u64, Some(&base[1..])),
        Err(CodecError::BaseLength { .. })
    ));
    assert_eq!(
        decode(e.encoding, &e.bytes, raw.len() as u64, Some(&base)).unwrap(),
        raw
    );
}

#[test]
fn base_of_another_length_falls_back_to_standalone() {
    let raw = data(DType::BF16, 100_000, 0, 3);
    let longer = [&raw[..], &[0u8; 2]].concat();
    for base in [&raw[..50_000], &longer[..]] {
        let e = encode(
            &raw,
            Hint {
                dtype: Some(DType::BF16),
                base: Some(base),
            },
        );
        assert_eq!(e.encoding, Encoding::Planes);
        assert!(!e.used_base);
        assert_eq!(
            decode(e.encoding, &e.bytes, raw.len() as u64, None).unwrap(),
            raw
        );
    }
    let bytes = Rng(4).bytes(100_000);
    let mut near = bytes.clone();
    near[500] ^= 1;
    let e = encode(
        &bytes,
        Hint {
            dtype: None,
            base: Some(&near[..99_999]),
        },
    );
    assert_eq!(e.encoding, Encoding::Raw);
}

#[test]
fn delta_is_chosen_only_when_the_base_is_close() {
    for dtype in [DType::F32, DType::BF16] {
        let raw = data(dtype, 1 << 20, 0, 5);
        let next = step(dtype, &raw, 1e-4, 6);
        let e = encode(
            &next,
            Hint {
                dtype: Some(dtype),
                base: Some(&raw),
            },
        );
        assert_eq!(e.encoding, Encoding::DeltaPlanes, "{dtype}");
        let alone = encode(
            &next,
            Hint {
                dtype: Some(dtype),
                base: None,
            },
        );
        assert!(e.bytes.len() < alone.bytes.len(), "{dtype}");

        let unrelated = data(dtype, 1 << 20, 0, 7);
        let e = encode(
            &next,
            Hint {
                dtype: Some(dtype),
                base: Some(&unrelated),
            },
        );
        assert_eq!(e.encoding, Encoding::Planes, "{dtype}");
        assert!(!e.used_base);
    }
    // Non-float bytes with a few flipped bits: XOR against the base.
    let bytes = Rng(8).bytes(1 << 20);
    let mut near = bytes.clone();
    for i in (0..near.len()).step_by(4096) {
        near[i] ^= 0x10;
    }
    let e = encode(
        &near,
        Hint {
            dtype: None,
            base: Some(&bytes),
        },
    );
    assert_eq!(e.encoding, Encoding::XorZstd);
    assert!(e.bytes.len() < near.len() / 100);
    let e = encode(
        &near,
        Hint {
            dtype: None,
            base: Some(&Rng(9).bytes(1 << 20)),
        },
    );
    assert_eq!(e.encoding, Encoding::Raw);
}

/// Planes must beat plain zstd on realistic weights. Measured on 1 MiB of normal(0, 0.02):
/// bf16 planes 1.51x vs zstd 1.28x, f32 planes 1.20x vs zstd 1.08x; the margins asserted are
/// about half of those gains.
#[test]
fn planes_beat_zstd_on_weights() {
    for (dtype, margin) in [(DType::BF16, 1.08), (DType::F32, 1.05)] {
        let raw = data(dtype, 1 << 20, 0, 10);
        let e = encode(
            &raw,
            Hint {
                dtype: Some(dtype),
                base: None,
            },
        );
        assert_eq!(e.encoding, Encoding::Planes);
        let zstd = encode(&raw, Hint::default());
        assert_eq!(zstd.encoding, Encoding::Zstd);
        let (planes, plain) = (ratio(&raw, &e), ratio(&raw, &zstd));
        assert!(
            planes > plain * margin,
            "{dtype}: planes {planes:.3} zstd {plain:.3}"
        );
    }
}

#[test]
fn odd_lengths_keep_their_tail() {
    for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
        for extra in 1..8 {
            let raw = data(dtype, 20_000 + extra, 0, extra as u64);
            let e = encode(
                &raw,
                Hint {
                    dtype: Some(dtype),
                    base: None,
                },
            );
            assert_eq!(e.encoding, Encoding::Planes, "{dtype} +{extra}");
            assert_eq!(
                decode(e.encoding, &e.bytes, raw.len() as u64, None).unwrap(),
                raw
            );
        }
    }
}
