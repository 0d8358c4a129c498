//! Key encodings. Integers are big-endian so that RocksDB's byte order is numeric order.

/// Separates a stream name from the version in index keys. Stream names cannot contain NUL
/// (see `model::Limits::validate_stream`), so `name ++ 0x00` is a prefix of exactly one stream.
pub const STREAM_SEP: u8 = 0;

pub fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Maps i64 onto u64 preserving order (flip the sign bit), for time-ordered keys.
pub fn i64_ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn read_i64_ordered(bytes: &[u8]) -> Option<i64> {
    read_u64(bytes).map(|u| (u ^ (1 << 63)) as i64)
}

/// `stream ++ 0x00`: the prefix of all index keys of one stream.
pub fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(stream.len() + 9);
    k.extend_from_slice(stream.as_bytes());
    k.push(STREAM_SEP);
    k
}

/// `stream ++ 0x00 ++ version(BE)`.
pub fn stream_index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut k = stream_prefix(stream);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The version part of a stream index key, if the key belongs to `prefix`.
pub fn stream_index_version(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    if rest.len() != 8 {
        return None;
    }
    read_u64(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_numeric() {
        let xs = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in xs.windows(2) {
            assert!(i64_ordered(w[0]) < i64_ordered(w[1]));
            assert_eq!(read_i64_ordered(&i64_ordered(w[0])), Some(w[0]));
        }
        assert!(u64_key(255) < u64_key(256));
        assert!(stream_index_key("a", 9) < stream_index_key("a", 10));
        // "a\0..." sorts before "a-..." and "ab...": prefixes never interleave.
        assert!(stream_index_key("a", u64::MAX) < stream_index_key("a-b", 0));
        assert_eq!(
            stream_index_version(&stream_prefix("a"), &stream_index_key("a", 77)),
            Some(77)
        );
        assert_eq!(
            stream_index_version(&stream_prefix("a"), &stream_index_key("ab", 7)),
            None
        );
    }
}
