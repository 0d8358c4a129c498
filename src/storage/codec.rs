//! Checksummed record encoding: `crc32(body) (4 bytes LE) ++ postcard(body)`.
//!
//! RocksDB checksums its blocks, but a record is also checked end to end here so that a torn
//! or flipped value is detected when it is read — never served — wherever it came from.

use serde::{de::DeserializeOwned, Serialize};

use super::{Result, StorageError};

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    // Reserve the checksum's 4 bytes up front so the body is serialized in place.
    let mut buf = postcard::to_extend(value, vec![0u8; 4]).map_err(|e| StorageError::Encode {
        what,
        detail: e.to_string(),
    })?;
    let crc = crc32fast::hash(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let body = verify(what, bytes)?;
    postcard::from_bytes(body).map_err(|e| StorageError::corrupt(what, e))
}

/// Checks the checksum and returns the body.
pub fn verify<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8]> {
    if bytes.len() < 4 {
        return Err(StorageError::corrupt(
            what,
            "record shorter than its checksum",
        ));
    }
    let (crc, body) = bytes.split_at(4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let got = crc32fast::hash(body);
    if want != got {
        return Err(StorageError::corrupt(
            what,
            format!("checksum mismatch (stored {want:08x}, computed {got:08x})"),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_detects_flips() {
        let v = (42u64, "stream-1".to_string(), vec![1u8, 2, 3]);
        let bytes = encode("t", &v).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u8>)>("t", &bytes).unwrap(), v);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode::<(u64, String, Vec<u8>)>("t", &b).is_err(),
                    "flip {i}:{bit}"
                );
            }
        }
        assert!(decode::<u64>("t", &bytes[..3]).is_err());
        assert!(decode::<u64>("t", &[]).is_err());
    }
}
