//! Core types of the event store — events, streams, expected versions — and the validation
//! of everything that crosses a boundary (names, sizes, counts). No IO here.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Stream names that start with `$` are reserved for the system (e.g. `$all`).
pub const RESERVED_PREFIX: char = '$';

/// What an append expects of the stream's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must hold no event.
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream's last version must be exactly this.
    Exact(u64),
}

impl ExpectedVersion {
    /// Checks the expectation against the stream's last version (`None`: no stream).
    pub fn admits(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no-stream"),
            ExpectedVersion::StreamExists => f.write_str("stream-exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event as a client proposes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    /// Client time in ns since the Unix epoch; 0 means "use the commit time".
    pub event_time_ns: i64,
    pub payload: Bytes,
    pub metadata: BTreeMap<String, String>,
}

impl NewEvent {
    /// An event of `event_type` with this id, schema version 1, no client time and no
    /// metadata.
    pub fn new(event_id: Uuid, event_type: &str, payload: &'static [u8]) -> NewEvent {
        NewEvent {
            event_id,
            event_type: event_type.to_owned(),
            schema_version: 1,
            event_time_ns: 0,
            payload: Bytes::from_static(payload),
            metadata: BTreeMap::new(),
        }
    }

    /// Bytes this event weighs against `max_event_bytes`: payload, type and metadata.
    pub fn weight_bytes(&self) -> usize {
        self.payload.len()
            + self.event_type.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// An event as stored: positions and commit time assigned by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream: String,
    pub stream_version: u64,
    pub global_position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub event_time_ns: i64,
    pub commit_time_ns: i64,
    pub payload: Bytes,
    pub metadata: BTreeMap<String, String>,
}

/// Fixed part of [`RecordedEvent::size_bytes`]: the id as text, positions, times, and the
/// protobuf tags and lengths around them.
const RECORDED_EVENT_FIXED_BYTES: usize = 96;

impl RecordedEvent {
    /// What this event weighs in a read page — in memory and in its protobuf reply — as
    /// counted against `max_read_bytes`: its variable parts plus a fixed allowance.
    pub fn size_bytes(&self) -> usize {
        RECORDED_EVENT_FIXED_BYTES
            + self.stream.len()
            + self.event_type.len()
            + self.payload.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
    }
}

/// Limits on what one request may carry. Every one is configurable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_stream_name_bytes: usize,
    pub max_event_type_bytes: usize,
    /// Payload + type + metadata of one event.
    pub max_event_bytes: usize,
    /// Sum of the event weights of one append.
    pub max_request_bytes: usize,
    pub max_events_per_append: usize,
    pub max_metadata_entries: usize,
    pub max_metadata_key_bytes: usize,
    /// Largest page a read returns, in events.
    pub max_read_limit: u32,
    /// Largest page a read returns, in bytes ([`RecordedEvent::size_bytes`] summed): a page
    /// ends before the event that would pass it, but always holds at least one event, so
    /// paging makes progress whatever the events weigh. The default stays under the 4 MiB
    /// that gRPC clients accept by default.
    pub max_read_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stream_name_bytes: 256,
            max_event_type_bytes: 128,
            max_event_bytes: 1 << 20,
            max_request_bytes: 4 << 20,
            max_events_per_append: 1000,
            max_metadata_entries: 64,
            max_metadata_key_bytes: 128,
            max_read_limit: 10_000,
            max_read_bytes: 3 << 20,
        }
    }
}

/// Why an input was refused. Each maps to `INVALID_ARGUMENT` at the API boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("stream name is empty")]
    EmptyStream,
    #[error("stream name is {len} bytes, the limit is {max}")]
    StreamTooLong { len: usize, max: usize },
    #[error("stream name {name:?} has a character outside [A-Za-z0-9_.:/@+=-] at byte {at}")]
    StreamCharset { name: String, at: usize },
    #[error("stream name {0:?} starts with '$', which is reserved for the system")]
    StreamReserved(String),
    #[error("event {index}: event type is empty")]
    EmptyEventType { index: usize },
    #[error("event {index}: event type is {len} bytes, the limit is {max}")]
    EventTypeTooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("event {index}: event type {ty:?} has a character outside [A-Za-z0-9_.:-]")]
    EventTypeCharset { index: usize, ty: String },
    #[error("event {index}: event id {id:?} is not a UUID")]
    BadEventId { index: usize, id: String },
    #[error("event {index}: event id {id} appears twice in one append")]
    DuplicateEventId { index: usize, id: Uuid },
    #[error("event {index}: event is {len} bytes (payload + type + metadata), the limit is {max}")]
    EventTooLarge {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("event {index}: {count} metadata entries, the limit is {max}")]
    TooManyMetadata {
        index: usize,
        count: usize,
        max: usize,
    },
    #[error("event {index}: metadata key is {len} bytes (empty or over the limit of {max})")]
    BadMetadataKey {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("append carries no events")]
    NoEvents,
    #[error("append carries {count} events, the limit is {max}")]
    TooManyEvents { count: usize, max: usize },
    #[error("append is {len} bytes, the limit is {max}")]
    RequestTooLarge { len: usize, max: usize },
    #[error("limit {limit} is above the maximum page size {max}")]
    ReadLimit { limit: u32, max: u32 },
    #[error(
        "stream {0:?} holds a workflow: write to it through the Workflows API (Create, \
         StartStep, AppendEvents, …), which checks every event against the workflow's state"
    )]
    WorkflowStream(String),
}

/// Streams `workflow-{id}` hold workflows. Only workflow commands write them, so that the
/// projection's transition rules hold whatever API a client uses.
pub const WORKFLOW_STREAM_PREFIX: &str = "workflow-";

/// A plain append (not a workflow command) may not write a workflow's stream.
pub fn check_plain_append_target(stream: &str) -> Result<(), ValidationError> {
    if stream.starts_with(WORKFLOW_STREAM_PREFIX) {
        return Err(ValidationError::WorkflowStream(stream.to_owned()));
    }
    Ok(())
}

pub fn stream_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@' | b'+' | b'=')
}

fn type_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

impl Limits {
    /// A stream name: 1..=max bytes of `[A-Za-z0-9_.:/@+=-]`, not starting with `$`.
    /// The charset keeps NUL (our key separator) and whitespace out of keys and logs.
    pub fn validate_stream(&self, name: &str) -> Result<(), ValidationError> {
        if name.is_empty() {
            return Err(ValidationError::EmptyStream);
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(ValidationError::StreamReserved(name.to_owned()));
        }
        if name.len() > self.max_stream_name_bytes {
            return Err(ValidationError::StreamTooLong {
                len: name.len(),
                max: self.max_stream_name_bytes,
            });
        }
        if let Some(at) = name.bytes().position(|b| !stream_char_ok(b)) {
            return Err(ValidationError::StreamCharset {
                name: name.chars().take(64).collect(),
                at,
            });
        }
        Ok(())
    }

    /// Validates a whole append; nothing is written unless this passes.
    pub fn validate_append(
        &self,
        stream: &str,
        events: &[NewEvent],
    ) -> Result<(), ValidationError> {
        self.validate_stream(stream)?;
        if events.is_empty() {
            return Err(ValidationError::NoEvents);
        }
        if events.len() > self.max_events_per_append {
            return Err(ValidationError::TooManyEvents {
                count: events.len(),
                max: self.max_events_per_append,
            });
        }
        let mut total = 0usize;
        for (index, e) in events.iter().enumerate() {
            self.validate_event(index, e)?;
            total += e.weight_bytes();
        }
        if total > self.max_request_bytes {
            return Err(ValidationError::RequestTooLarge {
                len: total,
                max: self.max_request_bytes,
            });
        }
        // Appends are small (≤ max_events_per_append): a quadratic scan beats a hash set here.
        for (index, e) in events.iter().enumerate() {
            if events[..index].iter().any(|p| p.event_id == e.event_id) {
                return Err(ValidationError::DuplicateEventId {
                    index,
                    id: e.event_id,
                });
            }
        }
        Ok(())
    }

    fn validate_event(&self, index: usize, e: &NewEvent) -> Result<(), ValidationError> {
        if e.event_type.is_empty() {
            return Err(ValidationError::EmptyEventType { index });
        }
        if e.event_type.len() > self.max_event_type_bytes {
            return Err(ValidationError::EventTypeTooLong {
                index,
                len: e.event_type.len(),
                max: self.max_event_type_bytes,
            });
        }
        if !e.event_type.bytes().all(type_char_ok) {
            return Err(ValidationError::EventTypeCharset {
                index,
                ty: e.event_type.chars().take(64).collect(),
            });
        }
        if e.metadata.len() > self.max_metadata_entries {
            return Err(ValidationError::TooManyMetadata {
                index,
                count: e.metadata.len(),
                max: self.max_metadata_entries,
            });
        }
        if let Some(k) = e
            .metadata
            .keys()
            .find(|k| k.is_empty() || k.len() > self.max_metadata_key_bytes)
        {
            return Err(ValidationError::BadMetadataKey {
                index,
                len: k.len(),
                max: self.max_metadata_key_bytes,
            });
        }
        let len = e.weight_bytes();
        if len > self.max_event_bytes {
            return Err(ValidationError::EventTooLarge {
                index,
                len,
                max: self.max_event_bytes,
            });
        }
        Ok(())
    }

    /// The most bytes an append (or a workflow command) these limits admit can take encoded
    /// in a Raft entry: its weighed bytes (`max_request_bytes`) plus, at their widest, what
    /// the encoding adds per event (id, lengths, schema version, event time: 48 bytes, and
    /// 10 per metadata entry) and per command (stream name, expected version, counts).
    pub fn max_append_encoded_bytes(&self) -> usize {
        let per_event = 48 + 10 * self.max_metadata_entries;
        self.max_request_bytes
            .saturating_add(self.max_events_per_append.saturating_mul(per_event))
            .saturating_add(self.max_stream_name_bytes + 48)
    }

    /// A read page size: 0 means the default page, anything above the maximum is refused.
    pub fn read_limit(&self, requested: u32) -> Result<u32, ValidationError> {
        match requested {
            0 => Ok(self.max_read_limit.min(1000)),
            n if n > self.max_read_limit => Err(ValidationError::ReadLimit {
                limit: n,
                max: self.max_read_limit,
            }),
            n => Ok(n),
        }
    }
}

/// The rules an append must meet whatever the configured limits: what the state machine
/// itself relies on (keys, gap-free positions). Checked when a command is applied, so that a
/// command that reached the log without edge validation (a peer on older code, a bug, a forged
/// node-to-node call) is refused by every replica alike instead of corrupting or halting it.
/// Configured limits are not checked there: they may differ between nodes.
pub fn check_append_structure(stream: &str, events: &[NewEvent]) -> Result<(), ValidationError> {
    Limits {
        max_stream_name_bytes: usize::MAX,
        ..Limits::default()
    }
    .validate_stream(stream)?;
    if events.is_empty() {
        return Err(ValidationError::NoEvents);
    }
    // Runs for every append in apply: small appends (nearly all) scan without allocating;
    // not bounded by a configured count here, a set keeps a forged huge append linear.
    let duplicate = if events.len() <= 32 {
        (1..events.len()).find(|&i| events[..i].iter().any(|p| p.event_id == events[i].event_id))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        events.iter().position(|e| !seen.insert(e.event_id))
    };
    match duplicate {
        Some(index) => Err(ValidationError::DuplicateEventId {
            index,
            id: events[index].event_id,
        }),
        None => Ok(()),
    }
}

/// Parses a client event id: empty gets a fresh id (not idempotent on retry).
pub fn parse_event_id(index: usize, raw: &str) -> Result<Uuid, ValidationError> {
    if raw.is_empty() {
        return Ok(new_event_id());
    }
    Uuid::parse_str(raw).map_err(|_| ValidationError::BadEventId {
        index,
        id: raw.chars().take(64).collect(),
    })
}

/// A fresh event id: a time-ordered UUIDv7. Any UUID is accepted as an event id, but
/// time-ordered ones keep inserts into the idempotency index (keyed by event id) near its
/// tail, where RocksDB's memtable finds their place in a few steps; random v4 ids land
/// anywhere and cost a full skiplist descent each (about 3x the CPU per insert, measured).
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_event_ids_are_time_ordered() {
        let ids: Vec<Uuid> = (0..10_000).map(|_| new_event_id()).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by creation");
        let parsed = parse_event_id(0, "").unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(parsed > ids[ids.len() - 1]);
    }

    fn ev(ty: &str, payload: usize) -> NewEvent {
        NewEvent {
            event_id: Uuid::new_v4(),
            event_type: ty.into(),
            schema_version: 1,
            event_time_ns: 0,
            payload: Bytes::from(vec![b'x'; payload]),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn stream_names() {
        let l = Limits::default();
        let cases: &[(&str, bool)] = &[
            ("orders-1", true),
            ("sat-7/battery_v", true),
            ("workflow-abc:def@x+y=z.1", true),
            ("", false),
            ("$all", false),
            ("has space", false),
            ("nul\0byte", false),
            ("ünïcode", false),
        ];
        for (name, ok) in cases {
            assert_eq!(l.validate_stream(name).is_ok(), *ok, "{name:?}");
        }
        let long = "a".repeat(257);
        assert_eq!(
            l.validate_stream(&long),
            Err(ValidationError::StreamTooLong { len: 257, max: 256 })
        );
    }

    #[test]
    fn append_limits() {
        let l = Limits {
            max_event_bytes: 100,
            max_request_bytes: 250,
            max_events_per_append: 3,
            ..Limits::default()
        };
        assert!(l.validate_append("s", &[ev("T", 10)]).is_ok());
        assert_eq!(l.validate_append("s", &[]), Err(ValidationError::NoEvents));
        assert!(matches!(
            l.validate_append("s", &[ev("T", 100)]),
            Err(ValidationError::EventTooLarge {
                index: 0,
                len: 101,
                max: 100
            })
        ));
        assert!(matches!(
            l.validate_append("s", &[ev("T", 1), ev("T", 1), ev("T", 1), ev("T", 1)]),
            Err(ValidationError::TooManyEvents { count: 4, max: 3 })
        ));
        assert!(matches!(
            l.validate_append("s", &[ev("T", 90), ev("T", 90), ev("T", 90)]),
            Err(ValidationError::RequestTooLarge { len: 273, max: 250 })
        ));
        assert!(matches!(
            l.validate_append("s", &[ev("bad type", 1)]),
            Err(ValidationError::EventTypeCharset { index: 0, .. })
        ));
        let a = ev("T", 1);
        assert!(matches!(
            l.validate_append("s", &[a.clone(), a]),
            Err(ValidationError::DuplicateEventId { index: 1, .. })
        ));
    }

    #[test]
    fn structural_checks_find_repeated_ids_in_small_and_large_appends() {
        for n in [3usize, 40] {
            let mut events: Vec<NewEvent> = (0..n).map(|_| ev("T", 1)).collect();
            assert_eq!(check_append_structure("s", &events), Ok(()));
            events[n - 1].event_id = events[1].event_id;
            assert!(matches!(
                check_append_structure("s", &events),
                Err(ValidationError::DuplicateEventId { index, .. }) if index == n - 1
            ));
        }
        assert_eq!(
            check_append_structure("s", &[]),
            Err(ValidationError::NoEvents)
        );
    }

    #[test]
    fn expected_versions() {
        use ExpectedVersion::*;
        let table = [
            (Any, None, true),
            (Any, Some(3), true),
            (NoStream, None, true),
            (NoStream, Some(0), false),
            (StreamExists, None, false),
            (StreamExists, Some(0), true),
            (Exact(2), Some(2), true),
            (Exact(2), Some(3), false),
            (Exact(0), None, false),
        ];
        for (e, cur, ok) in table {
            assert_eq!(e.admits(cur), ok, "{e} vs {cur:?}");
        }
    }

    #[test]
    fn read_limits() {
        let l = Limits::default();
        assert_eq!(l.read_limit(0), Ok(1000));
        assert_eq!(l.read_limit(5), Ok(5));
        assert!(l.read_limit(10_001).is_err());
    }
}
