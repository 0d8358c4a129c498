//! The stored form of projection snapshots (the state after every N events, which bound the
//! replay behind temporal queries), and when one is due.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::state::WorkflowState;

/// Format version of [`encode_projection_snapshot`]. A snapshot in another format is not read;
/// the projection is rebuilt from the events instead.
pub const PROJECTION_SNAPSHOT_FORMAT: u32 = 1;
/// A reasonable default for "store a projection snapshot every N events".
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 64;

#[derive(Serialize)]
struct SnapshotEnvelopeRef<'a> {
    format: u32,
    state: &'a WorkflowState,
}

/// Why a stored projection snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "projection snapshot has format {found}, this code reads format {expected}; rebuild \
         the projection from the events"
    )]
    UnsupportedFormat { found: u32, expected: u32 },
    #[error("projection snapshot is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// Whether a projection snapshot is due after applying the event that produced `state`.
pub fn snapshot_due(state: &WorkflowState, every: u64) -> bool {
    every > 0 && state.event_count.is_multiple_of(every)
}

/// The stored form of a projection snapshot: compact JSON `{"format":1,"state":{…}}`.
pub fn encode_projection_snapshot(state: &WorkflowState) -> Result<Vec<u8>, SnapshotError> {
    Ok(serde_json::to_vec(&SnapshotEnvelopeRef {
        format: PROJECTION_SNAPSHOT_FORMAT,
        state,
    })?)
}

/// Reads a projection snapshot written by [`encode_projection_snapshot`].
pub fn decode_projection_snapshot(bytes: &[u8]) -> Result<WorkflowState, SnapshotError> {
    let Envelope { format, state } = serde_json::from_slice(bytes)?;
    match state {
        Some(state) if format == PROJECTION_SNAPSHOT_FORMAT => Ok(state),
        _ => Err(SnapshotError::UnsupportedFormat {
            found: format,
            expected: PROJECTION_SNAPSHOT_FORMAT,
        }),
    }
}

/// A snapshot's envelope, read in one pass. The encoder writes `format` first, so the state
/// is parsed straight into its type once its format is known to be ours, with no `Value` in
/// between: every temporal query decodes two or three states of up to tens of KiB. A state
/// before its format (valid, though not what we write) is kept as raw JSON until the format
/// is known, a state of another format is skipped (its JSON still checked). It reads what a
/// derived `Deserialize` read: a map with the fields in any order, unknown ones ignored, a
/// repeated or a missing one refused, or a sequence `[format, state]`. A field of the state
/// repeated is refused wherever the state stands (a `Value` would keep the last); inside
/// its maps and free-form values, the last of a repeated key is kept, as before.
struct Envelope {
    format: u32,
    /// `None` when `format` is not ours.
    state: Option<WorkflowState>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Format,
    State,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("SnapshotEnvelope", &["format", "state"], EnvelopeVisitor)
    }
}

/// The state of format `format`, read from where it stands: `Some` when the format is ours,
/// `None` when it is another (the state's JSON checked and skipped).
struct StateOf {
    format: u32,
}

impl<'de> serde::de::DeserializeSeed<'de> for StateOf {
    type Value = Option<WorkflowState>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.format == PROJECTION_SNAPSHOT_FORMAT {
            WorkflowState::deserialize(d).map(Some)
        } else {
            serde::de::IgnoredAny::deserialize(d).map(|_| None)
        }
    }
}

struct EnvelopeVisitor;

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a projection snapshot {format, state}")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        use serde::de::Error;
        let format: u32 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let state = seq
            .next_element_seed(StateOf { format })?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        Ok(Envelope { format, state })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        use serde::de::{Error, IgnoredAny};
        enum Seen<'a> {
            Read(Option<WorkflowState>),
            Early(&'a RawValue),
        }
        let mut format: Option<u32> = None;
        let mut state: Option<Seen<'de>> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Format if format.is_some() => {
                    return Err(A::Error::duplicate_field("format"))
                }
                Field::Format => format = Some(map.next_value()?),
                Field::State if state.is_some() => return Err(A::Error::duplicate_field("state")),
                Field::State => {
                    state = Some(match format {
                        Some(format) => Seen::Read(map.next_value_seed(StateOf { format })?),
                        None => Seen::Early(map.next_value()?),
                    })
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let format = format.ok_or_else(|| A::Error::missing_field("format"))?;
        let state = match state.ok_or_else(|| A::Error::missing_field("state"))? {
            Seen::Read(state) => state,
            Seen::Early(raw) => {
                use serde::de::DeserializeSeed;
                let mut d = serde_json::Deserializer::from_str(raw.get());
                StateOf { format }
                    .deserialize(&mut d)
                    .map_err(A::Error::custom)?
            }
        };
        Ok(Envelope { format, state })
    }
}
