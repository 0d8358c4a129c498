//! Decoding corrupt segments/rollups never panics: every truncation and a
//! large sample of byte flips return an error or (if the flip is harmless)
//! exactly the original data.

use aetherops::telemetry::segment::{self, SegmentError};
use proptest::prelude::*;

#[path = "telemetry_common/mod.rs"]
mod common;

fn segments() -> Vec<(Vec<i64>, Vec<f64>, Vec<u8>)> {
    let (ts, vals) = common::adc_series(3000, 7);
    let irregular: Vec<i64> = (0..2000i64).map(|i| i * i * 100 + (i % 7) * 10).collect();
    let noisy: Vec<f64> = (0..2000).map(|i| ((i * 7919) as f64).sin() * 1e6).collect();
    let mut out = Vec::new();
    for (t, v) in [
        (ts, vals),
        (irregular, noisy),
        (vec![42], vec![1.5]),
        (vec![], vec![]),
    ] {
        let b = segment::encode(&t, &v).unwrap();
        out.push((t, v, b));
    }
    out
}

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn truncations_and_flips_never_panic() {
    for (ts, vals, bytes) in segments() {
        for cut in 0..bytes.len() {
            assert!(
                segment::decode(&bytes[..cut]).is_err(),
                "truncation to {cut} accepted"
            );
        }
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(segment::decode(&extended).is_err());
        let (mut t2, mut v2) = (Vec::new(), Vec::new());
        for i in 0..bytes.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut c = bytes.clone();
                c[i] ^= x;
                if segment::decode_into(&c, &mut t2, &mut v2).is_ok() {
                    assert!(
                        t2 == ts && same(&v2, &vals),
                        "flip at {i} changed data silently"
                    );
                }
            }
        }
    }
}

/// Corruption *behind* a valid checksum (a buggy or malicious writer): pco
/// itself must reject or decode without panicking.
#[test]
fn corrupt_payload_with_recomputed_crc_never_panics() {
    let mut errors = 0;
    for (_, _, bytes) in segments() {
        if bytes.len() <= segment::HEADER_LEN {
            continue;
        }
        for i in segment::HEADER_LEN..bytes.len() {
            for x in [0x01u8, 0x10, 0xff] {
                let mut c = bytes.clone();
                c[i] ^= x;
                let mut h = crc32fast::Hasher::new();
                h.update(&c[..44]);
                h.update(&c[segment::HEADER_LEN..]);
                c[44..48].copy_from_slice(&h.finalize().to_le_bytes());
                if segment::decode(&c).is_err() {
                    errors += 1;
                }
            }
        }
    }
    println!("payload corruptions rejected by pco/validation: {errors}");
}

#[test]
fn header_specific_errors() {
    let (_, _, bytes) = segments().remove(0);
    let mut c = bytes.clone();
    c[4] = 9;
    assert_eq!(
        segment::decode(&c),
        Err(SegmentError::UnsupportedVersion(9))
    );
    let mut c = bytes.clone();
    c[100] ^= 1;
    assert!(matches!(
        segment::decode(&c),
        Err(SegmentError::Checksum { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
        if magic && bytes.len() >= 5 {
            bytes[..5].copy_from_slice(b"AETS\x01");
        }
        let _ = segment::decode(&bytes);
        let _ = aetherops::telemetry::rollup::RollupBucket::decode(&bytes);
    }
}
