//! # Workflow import format
//!
//! Workflows from the older system are brought into AetherOps as JSON. Each workflow is checked,
//! turned into a `WorkflowState`, and written as **one `WorkflowSnapshot` event** at stream version 0
//! of its own, empty stream `workflow-{id}`. From then on it is an ordinary workflow: steps can be
//! started, retried and completed with the usual events.
//!
//! Two containers are accepted, holding the same workflow objects:
//!
//! * **Document**: one JSON object with a `workflows` array (and optionally `"format_version": 1`;
//!   no other top-level keys):
//!
//!   ```json
//!   {"format_version": 1, "workflows": [ {…workflow…}, {…workflow…} ]}
//!   ```
//!
//! * **JSON Lines**: one workflow object per line, UTF-8. Blank lines are skipped, `\r\n` line
//!   ends and a leading byte-order mark are accepted, a line may be at most 16 MiB. JSON Lines
//!   files are read as a stream, one line at a time, so they can be larger than memory.
//!
//! When the kind is not given, input that parses as a single JSON object with a `workflows` key
//! is a document; anything else is read as JSON Lines.
//!
//! ## Workflow object
//!
//! | field          | type                    | required | meaning |
//! | -------------- | ----------------------- | -------- | ------- |
//! | `id`           | string                  | yes      | Workflow id: 1–256 bytes, no control characters, unique within the import. The stream is `workflow-{id}`. |
//! | `name`         | string                  | yes      | At most 256 bytes. |
//! | `status`       | string                  | yes      | `"pending"`, `"running"`, `"succeeded"`, `"failed"` or `"cancelled"`. |
//! | `created_at`   | timestamp               | yes      | When the workflow was created in the old system. |
//! | `completed_at` | timestamp               | see rule | Required for `succeeded`, `failed` and `cancelled`; not allowed otherwise. |
//! | `reason`       | string                  | no       | Why the workflow ended; only on `succeeded`, `failed`, `cancelled`. |
//! | `steps`        | array of step objects   | no       | In execution order; at most 1024; ids unique. Default `[]`. |
//! | `metadata`     | object, string → string | no       | At most 256 entries; keys 1–256 bytes, values at most 4096 bytes. |
//!
//! ## Step object
//!
//! | field          | type            | required | meaning |
//! | -------------- | --------------- | -------- | ------- |
//! | `id`           | string          | yes      | 1–256 bytes, no control characters. |
//! | `name`         | string          | no       | At most 256 bytes; defaults to the id. |
//! | `status`       | string          | yes      | `"pending"`, `"running"`, `"completed"` or `"failed"`. |
//! | `attempts`     | integer ≥ 0     | no       | Attempts started so far. Defaults to 0 for `pending`, 1 otherwise. |
//! | `max_attempts` | integer ≥ 1     | no       | Attempts allowed in total. Defaults to `max(1, attempts)`. |
//! | `started_at`   | timestamp       | no       | Start of the latest attempt. |
//! | `ended_at`     | timestamp       | no       | End of the latest attempt; not before `started_at`. |
//! | `output`       | any JSON        | no       | Output of a completed step; nesting at most 64 levels. `null` means none. |
//! | `error`        | string or null  | no       | Error of the latest failed attempt. |
//! | `retryable`    | boolean         | no       | For a failed step: `false` forbids starting it again. Unset means it may be retried while attempts remain. |
//! | `worker`       | string          | no       | Worker of the latest attempt; at most 256 bytes. |
//!
//! ## Timestamps
//!
//! RFC 3339 / ISO 8601 date-times **with a time zone**: `"2026-11-26T21:08:55Z"`,
//! `"2026-11-26T22:08:55+01:00"`, `"2026-11-26T21:08:55.123456789Z"` (fractional seconds down to
//! nanoseconds). A time without a zone (`"2026-11-26T21:08:55"`) is rejected, because it is
//! ambiguous. Representable range: years 1677 to 2262.
//!
//! ## Consistency rules
//!
//! * A `pending` workflow has only `pending` steps.
//! * A `succeeded` workflow has only `completed` steps.
//! * A step that is `running`, `completed` or `failed` has at least 1 attempt, and no step has
//!   more attempts than `max_attempts`.
//! * `completed_at` is not before `created_at`.
//! * Unknown fields are rejected (a misspelt `create_at` must not silently drop data); put extra
//!   information in `metadata`.
//!
//! ## What is stored
//!
//! The `WorkflowState` written in the snapshot keeps the imported times (`created_at_ns`,
//! `completed_at_ns`, the steps' `started_at_ns`/`ended_at_ns`). When the snapshot event is
//! applied, `version` becomes 0, `event_count` 1, `updated_at_ns` the event's commit time, and
//! `current_step` is recomputed (the first running step, else the first step not completed).
//!
//! ## Errors
//!
//! Every error names the workflow by its 0-based position in the `workflows` array or among the
//! non-blank lines, its id when it has one, and for JSON Lines its 1-based line number, e.g.
//!
//! ```text
//! workflow #3 (id "wf-9", line 5): steps[1].ended_at: timestamp "2026-01-02T03:04:05" has no time zone; …
//! ```
//!
//! ## Example
//!
//! ```json
//! {"workflows": [
//!   {"id": "wf-1", "name": "Deorbit sat-42", "status": "running",
//!    "created_at": "2026-01-02T03:04:05Z",
//!    "steps": [
//!      {"id": "plan", "name": "Plan burn", "status": "completed", "attempts": 1,
//!       "started_at": "2026-01-02T03:05:00Z", "ended_at": "2026-01-02T03:06:00.25Z",
//!       "output": {"delta_v": 12.5}, "error": null},
//!      {"id": "burn", "name": "Execute burn", "status": "failed", "attempts": 1,
//!       "max_attempts": 3, "started_at": "2026-01-02T05:00:00+01:00",
//!       "ended_at": "2026-01-02T05:00:30+01:00", "error": "thruster fault", "retryable": true},
//!      {"id": "verify", "name": "Verify orbit", "status": "pending"}
//!    ],
//!    "metadata": {"asset": "sat-42", "source": "legacy-ops"}},
//!   {"id": "wf-2", "name": "Antenna check", "status": "cancelled",
//!    "created_at": "2025-12-30T10:00:00Z", "completed_at": "2025-12-30T11:00:00Z",
//!    "reason": "superseded", "steps": []}
//! ]}
//! ```
//!
//! ## API
//!
//! * [`parse_import`] reads either container from memory; [`parse_document`] and
//!   [`parse_json_lines`] read one kind. They stop at the first bad workflow.
//! * [`document_workflows`] and [`JsonLinesReader`] yield one result per workflow, so every
//!   bad workflow can be listed; [`JsonLinesReader`] streams from any `BufRead`.
//! * [`parse_workflow`] checks a single workflow object.
//! * [`snapshot_event`] wraps a parsed state as the `WorkflowSnapshot` event to append at
//!   stream version 0 of `workflow-{id}` (see `events::stream_name`).
//!
//! This text is kept in sync with `IMPORT-FORMAT.md` at the crate root.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, Read};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::events::{WorkflowEvent, WorkflowSnapshot};
use super::state::{StateError, StepState, StepStatus, WorkflowState, WorkflowStatus};
use crate::time::{parse_timestamp, TimestampError};

/// Longest JSON Lines line accepted, in bytes (without the line end).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// The only `format_version` a document may declare.
pub const IMPORT_FORMAT_VERSION: u64 = 1;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A workflow object as written in the import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    id: String,
    name: String,
    status: WorkflowStatus,
    created_at: String,
    #[serde(default)]
    completed_at: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// A step object as written in the import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    #[serde(default)]
    name: Option<String>,
    status: StepStatus,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    ended_at: Option<String>,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default)]
    worker: Option<String>,
}

/// What is wrong with one workflow or with the input as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ImportErrorKind {
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("does not match the import format: {0}")]
    Format(#[source] serde_json::Error),
    #[error("{0}")]
    Document(String),
    #[error("{field}: {source}")]
    Timestamp {
        field: String,
        #[source]
        source: TimestampError,
    },
    #[error("{0}")]
    Invalid(#[from] StateError),
    #[error("the id appears more than once in this import")]
    DuplicateId,
    #[error("the line is longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("cannot read the input: {0}")]
    Io(#[from] io::Error),
}

/// An import error with the position of the workflow it concerns.
#[derive(Debug)]
pub struct ImportError {
    /// 0-based position of the workflow in the `workflows` array or among the non-blank
    /// lines; `None` for errors about the input as a whole.
    pub index: Option<usize>,
    /// The workflow's id, when it could be read.
    pub id: Option<String>,
    /// 1-based line number, for JSON Lines.
    pub line: Option<usize>,
    /// Boxed to keep `Result<_, ImportError>` small.
    pub kind: Box<ImportErrorKind>,
}

impl ImportError {
    fn whole(kind: ImportErrorKind) -> Self {
        ImportError {
            index: None,
            id: None,
            line: None,
            kind: Box::new(kind),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut context = Vec::new();
        if let Some(id) = &self.id {
            context.push(format!("id {id:?}"));
        }
        if let Some(line) = self.line {
            context.push(format!("line {line}"));
        }
        match self.index {
            Some(index) => write!(f, "workflow #{index}")?,
            None => f.write_str("import")?,
        }
        if !context.is_empty() {
            write!(f, " ({})", context.join(", "))?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.kind.as_ref())
    }
}

/// The event that brings an imported workflow into its (empty) stream `workflow-{id}`.
pub fn snapshot_event(state: WorkflowState) -> WorkflowEvent {
    WorkflowEvent::WorkflowSnapshot(WorkflowSnapshot { state })
}

/// Parses and checks one workflow object.
pub fn parse_workflow(value: Value) -> Result<WorkflowState, ImportErrorKind> {
    if !value.is_object() {
        return Err(ImportErrorKind::Document(format!(
            "a workflow must be a JSON object, found {}",
            match value {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )));
    }
    let raw: RawWorkflow = serde_json::from_value(value).map_err(ImportErrorKind::Format)?;
    convert(raw)
}

fn timestamp(field: impl FnOnce() -> String, text: &str) -> Result<i64, ImportErrorKind> {
    parse_timestamp(text).map_err(|source| ImportErrorKind::Timestamp {
        field: field(),
        source,
    })
}

fn optional_timestamp(
    field: impl FnOnce() -> String,
    text: Option<&str>,
) -> Result<Option<i64>, ImportErrorKind> {
    text.map(|t| timestamp(field, t)).transpose()
}

fn convert(raw: RawWorkflow) -> Result<WorkflowState, ImportErrorKind> {
    let created_at_ns = timestamp(|| "created_at".to_owned(), &raw.created_at)?;
    let completed_at_ns =
        optional_timestamp(|| "completed_at".to_owned(), raw.completed_at.as_deref())?;
    let mut latest = completed_at_ns.unwrap_or(created_at_ns).max(created_at_ns);
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.into_iter().enumerate() {
        let started_at_ns = optional_timestamp(
            || format!("steps[{i}].started_at"),
            step.started_at.as_deref(),
        )?;
        let ended_at_ns =
            optional_timestamp(|| format!("steps[{i}].ended_at"), step.ended_at.as_deref())?;
        latest = latest
            .max(started_at_ns.unwrap_or(latest))
            .max(ended_at_ns.unwrap_or(latest));
        let attempts = step.attempts.unwrap_or(match step.status {
            StepStatus::Pending => 0,
            _ => 1,
        });
        let name = step.name.unwrap_or_else(|| step.id.clone());
        steps.push(StepState {
            id: step.id,
            name,
            status: step.status,
            attempts,
            max_attempts: step.max_attempts.unwrap_or(attempts.max(1)),
            started_at_ns,
            ended_at_ns,
            output: step.output,
            last_error: step.error,
            retryable: step.retryable,
            worker: step.worker,
        });
    }
    let mut state = WorkflowState {
        workflow_id: raw.id,
        name: raw.name,
        status: raw.status,
        steps,
        current_step: None,
        metadata: raw.metadata,
        created_at_ns,
        // Replaced by the snapshot event's commit time when it is applied.
        updated_at_ns: latest,
        completed_at_ns,
        completion_reason: raw.reason,
        version: 0,
        event_count: 0,
    };
    state.current_step = state.compute_current_step();
    state.check()?;
    Ok(state)
}

/// Tracks ids already imported, to reject duplicates.
#[derive(Debug, Default)]
struct Seen(HashSet<String>);

impl Seen {
    fn check(
        &mut self,
        index: usize,
        line: Option<usize>,
        id_hint: Option<String>,
        result: Result<WorkflowState, ImportErrorKind>,
    ) -> Result<WorkflowState, ImportError> {
        let located = |id: Option<String>, kind| ImportError {
            index: Some(index),
            id,
            line,
            kind: Box::new(kind),
        };
        match result {
            Err(kind) => Err(located(id_hint, kind)),
            Ok(state) => {
                if self.0.insert(state.workflow_id.clone()) {
                    Ok(state)
                } else {
                    Err(located(
                        Some(state.workflow_id),
                        ImportErrorKind::DuplicateId,
                    ))
                }
            }
        }
    }
}

fn id_hint(value: &Value) -> Option<String> {
    value.get("id").and_then(Value::as_str).map(str::to_owned)
}

fn strip_bom(input: &[u8]) -> &[u8] {
    input.strip_prefix(UTF8_BOM).unwrap_or(input)
}

/// The workflows of a document, one result each, so that every bad workflow can be reported.
/// Fails as a whole only when the input is not a document at all.
#[derive(Debug)]
pub struct DocumentWorkflows {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    seen: Seen,
}

impl Iterator for DocumentWorkflows {
    type Item = Result<WorkflowState, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (index, value) = self.items.next()?;
        let hint = id_hint(&value);
        Some(self.seen.check(index, None, hint, parse_workflow(value)))
    }
}

/// Reads a document `{"workflows": [...]}` (see the module docs) and yields its workflows.
pub fn document_workflows(input: &[u8]) -> Result<DocumentWorkflows, ImportError> {
    let value: Value = serde_json::from_slice(strip_bom(input))
        .map_err(|e| ImportError::whole(ImportErrorKind::Json(e)))?;
    match value {
        Value::Object(map) => document_from_map(map),
        _ => Err(ImportError::whole(ImportErrorKind::Document(
            "an import document must be a JSON object with a \"workflows\" array".to_owned(),
        ))),
    }
}

fn document_from_map(mut map: Map<String, Value>) -> Result<DocumentWorkflows, ImportError> {
    let bad = |message: String| ImportError::whole(ImportErrorKind::Document(message));
    if let Some(version) = map.remove("format_version") {
        if version.as_u64() != Some(IMPORT_FORMAT_VERSION) {
            return Err(bad(format!(
                "format_version {version} is not supported; this importer reads format_version \
                 {IMPORT_FORMAT_VERSION}"
            )));
        }
    }
    let workflows = match map.remove("workflows") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("\"workflows\" must be an array".to_owned())),
        None => return Err(bad("the document has no \"workflows\" array".to_owned())),
    };
    if let Some(key) = map.keys().next() {
        return Err(bad(format!(
            "unknown top-level field {key:?}; a document has only \"workflows\" and \
             \"format_version\""
        )));
    }
    Ok(DocumentWorkflows {
        items: workflows.into_iter().enumerate(),
        seen: Seen::default(),
    })
}

/// Parses a whole document, stopping at the first bad workflow.
pub fn parse_document(input: &[u8]) -> Result<Vec<WorkflowState>, ImportError> {
    document_workflows(input)?.collect()
}

/// Parses in-memory JSON Lines, stopping at the first bad line. For large inputs use
/// [`JsonLinesReader`] directly.
pub fn parse_json_lines(input: &[u8]) -> Result<Vec<WorkflowState>, ImportError> {
    JsonLinesReader::new(input).collect()
}

/// Parses either container, telling them apart as the module docs describe.
pub fn parse_import(input: &[u8]) -> Result<Vec<WorkflowState>, ImportError> {
    match serde_json::from_slice::<Value>(strip_bom(input)) {
        Ok(Value::Object(map)) if map.contains_key("workflows") => {
            document_from_map(map)?.collect()
        }
        _ => parse_json_lines(input),
    }
}

/// Streams workflows out of JSON Lines, one line in memory at a time. A bad line yields an
/// error and reading goes on with the next line; a read error ends the stream.
#[derive(Debug)]
pub struct JsonLinesReader<R> {
    reader: R,
    buf: Vec<u8>,
    line: usize,
    index: usize,
    max_line_bytes: usize,
    seen: Seen,
    done: bool,
}

impl<R: BufRead> JsonLinesReader<R> {
    pub fn new(reader: R) -> Self {
        JsonLinesReader {
            reader,
            buf: Vec::new(),
            line: 0,
            index: 0,
            max_line_bytes: MAX_LINE_BYTES,
            seen: Seen::default(),
            done: false,
        }
    }

    /// Sets the longest line accepted (default [`MAX_LINE_BYTES`]).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line_bytes = max;
        self
    }

    /// Reads the next line into `buf` (without its line end). `Ok(false)` at the end of input,
    /// `Ok(true)` with `too_long` set when the line was skipped for its length.
    fn read_line(&mut self, too_long: &mut bool) -> io::Result<bool> {
        self.buf.clear();
        *too_long = false;
        let limit = u64::try_from(self.max_line_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let n = self
            .reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > self.max_line_bytes {
            *too_long = true;
            self.buf.clear();
            self.reader.skip_until(b'\n')?;
            return Ok(true);
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.line == 1 && self.buf.starts_with(UTF8_BOM) {
            self.buf.drain(..UTF8_BOM.len());
        }
        Ok(true)
    }
}

impl<R: BufRead> Iterator for JsonLinesReader<R> {
    type Item = Result<WorkflowState, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let mut too_long = false;
            match self.read_line(&mut too_long) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(ImportError {
                        index: None,
                        id: None,
                        line: Some(self.line + 1),
                        kind: Box::new(ImportErrorKind::Io(e)),
                    }));
                }
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Ok(true) => {}
            }
            let index = self.index;
            let line = Some(self.line);
            if too_long {
                self.index += 1;
                return Some(Err(ImportError {
                    index: Some(index),
                    id: None,
                    line,
                    kind: Box::new(ImportErrorKind::LineTooLong {
                        max: self.max_line_bytes,
                    }),
                }));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.index += 1;
            let result = match serde_json::from_slice::<Value>(&self.buf) {
                Err(e) => Err(ImportError {
                    index: Some(index),
                    id: None,
                    line,
                    kind: Box::new(ImportErrorKind::Json(e)),
                }),
                Ok(value) => {
                    let hint = id_hint(&value);
                    self.seen.check(index, line, hint, parse_workflow(value))
                }
            };
            return Some(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::WorkflowRecord;
    use super::super::projection::WorkflowProjection;
    use super::super::rules::validate;
    use super::*;
    use serde_json::json;

    /// The example of the format documentation.
    const EXAMPLE: &str = r#"{"workflows": [
  {"id": "wf-1", "name": "Deorbit sat-42", "status": "running",
   "created_at": "2026-01-02T03:04:05Z",
   "steps": [
     {"id": "plan", "name": "Plan burn", "status": "completed", "attempts": 1,
      "started_at": "2026-01-02T03:05:00Z", "ended_at": "2026-01-02T03:06:00.25Z",
      "output": {"delta_v": 12.5}, "error": null},
     {"id": "burn", "name": "Execute burn", "status": "failed", "attempts": 1,
      "max_attempts": 3, "started_at": "2026-01-02T05:00:00+01:00",
      "ended_at": "2026-01-02T05:00:30+01:00", "error": "thruster fault", "retryable": true},
     {"id": "verify", "name": "Verify orbit", "status": "pending"}
   ],
   "metadata": {"asset": "sat-42", "source": "legacy-ops"}},
  {"id": "wf-2", "name": "Antenna check", "status": "cancelled",
   "created_at": "2025-12-30T10:00:00Z", "completed_at": "2025-12-30T11:00:00Z",
   "reason": "superseded", "steps": []}
]}"#;

    fn ts(s: &str) -> i64 {
        parse_timestamp(s).expect("test timestamp")
    }

    fn as_lines(doc: &str) -> String {
        let value: Value = serde_json::from_str(doc).expect("json");
        value["workflows"]
            .as_array()
            .expect("array")
            .iter()
            .map(|w| serde_json::to_string(w).expect("json") + "\n")
            .collect()
    }

    fn check_example(states: &[WorkflowState]) {
        assert_eq!(states.len(), 2);
        let wf = &states[0];
        assert_eq!(wf.workflow_id, "wf-1");
        assert_eq!(wf.status, WorkflowStatus::Running);
        assert_eq!(wf.created_at_ns, ts("2026-01-02T03:04:05Z"));
        assert_eq!(wf.completed_at_ns, None);
        assert_eq!(wf.metadata.len(), 2);
        assert_eq!(wf.current_step.as_deref(), Some("burn"));
        let plan = &wf.steps[0];
        assert_eq!(plan.status, StepStatus::Completed);
        assert_eq!((plan.attempts, plan.max_attempts), (1, 1));
        assert_eq!(plan.ended_at_ns, Some(ts("2026-01-02T03:06:00.25Z")));
        assert_eq!(plan.output, json!({"delta_v": 12.5}));
        assert_eq!(plan.last_error, None);
        let burn = &wf.steps[1];
        assert_eq!(burn.status, StepStatus::Failed);
        assert_eq!((burn.attempts, burn.max_attempts), (1, 3));
        assert_eq!(burn.started_at_ns, Some(ts("2026-01-02T04:00:00Z")));
        assert_eq!(burn.last_error.as_deref(), Some("thruster fault"));
        assert_eq!(burn.retryable, Some(true));
        let verify = &wf.steps[2];
        assert_eq!(verify.name, "Verify orbit");
        assert_eq!((verify.attempts, verify.max_attempts), (0, 1));

        let wf2 = &states[1];
        assert_eq!(wf2.status, WorkflowStatus::Cancelled);
        assert_eq!(wf2.completed_at_ns, Some(ts("2025-12-30T11:00:00Z")));
        assert_eq!(wf2.completion_reason.as_deref(), Some("superseded"));
        assert_eq!(wf2.current_step, None);
    }

    #[test]
    fn documented_example_parses() {
        check_example(&parse_document(EXAMPLE.as_bytes()).expect("valid"));
        check_example(&parse_import(EXAMPLE.as_bytes()).expect("valid"));
    }

    #[test]
    fn json_lines_parse_like_the_document() {
        let lines = as_lines(EXAMPLE);
        check_example(&parse_json_lines(lines.as_bytes()).expect("valid"));
        check_example(&parse_import(lines.as_bytes()).expect("valid"));
        // CRLF, blank lines, a byte-order mark, no final newline.
        let messy = format!(
            "\u{feff}\r\n  \n{}",
            lines.replace('\n', "\r\n\r\n").trim_end()
        );
        check_example(&parse_import(messy.as_bytes()).expect("valid"));
        check_example(&parse_json_lines(messy.as_bytes()).expect("valid"));
        // One workflow on one line is JSON Lines too.
        let first = lines.lines().next().expect("line");
        assert_eq!(parse_import(first.as_bytes()).expect("valid").len(), 1);
        assert_eq!(parse_import(b"").expect("empty").len(), 0);
        assert_eq!(
            parse_document(br#"{"format_version":1,"workflows":[]}"#)
                .expect("ok")
                .len(),
            0
        );
    }

    #[test]
    fn imported_states_become_snapshot_events_that_apply() {
        for state in parse_document(EXAMPLE.as_bytes()).expect("valid") {
            let event = snapshot_event(state.clone());
            assert_eq!(validate(None, &event), Ok(()));
            let encoded = event.encode().expect("encodes");
            let record = WorkflowRecord {
                stream_version: 0,
                commit_time_ns: 42,
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                payload: encoded.payload,
            };
            let mut projection = WorkflowProjection::new();
            projection.apply_record(&record).expect("applies");
            let applied = projection.state().expect("exists");
            assert_eq!(applied.steps, state.steps);
            assert_eq!(applied.created_at_ns, state.created_at_ns);
            assert_eq!(
                (applied.version, applied.event_count, applied.updated_at_ns),
                (0, 1, 42)
            );
        }
        // The imported running workflow carries on: retry the failed step.
        let state = parse_document(EXAMPLE.as_bytes()).expect("valid").remove(0);
        let mut projection = WorkflowProjection::new();
        projection
            .apply(&snapshot_event(state), 42, 0)
            .expect("import");
        let retry = WorkflowEvent::StepStarted(super::super::events::StepStarted {
            step_id: "burn".into(),
            attempt: 2,
            worker: None,
        });
        projection.apply(&retry, 43, 1).expect("retry");
    }

    fn first_error(input: &str) -> ImportError {
        parse_import(input.as_bytes()).expect_err("invalid input")
    }

    fn workflow(extra: Value) -> String {
        let mut w = json!({"id": "wf-9", "name": "n", "status": "running",
                           "created_at": "2026-01-02T03:04:05Z",
                           "steps": [{"id": "a", "status": "pending"}]});
        if let (Value::Object(base), Value::Object(extra)) = (&mut w, extra) {
            base.extend(extra);
        }
        serde_json::to_string(&json!({"workflows": [{"id": "ok", "name": "fine", "status": "pending", "created_at": "2026-01-01T00:00:00Z"}, w]}))
            .expect("json")
    }

    #[test]
    fn bad_workflows_are_reported_with_index_and_id() {
        let err = first_error(&workflow(json!({"name": null})));
        assert_eq!(err.index, Some(1));
        assert_eq!(err.id.as_deref(), Some("wf-9"));
        assert!(matches!(*err.kind, ImportErrorKind::Format(_)));
        assert!(
            err.to_string().starts_with(
                "workflow #1 (id \"wf-9\"): does not match the import format: invalid type: null"
            ),
            "{err}"
        );

        let err = first_error(&workflow(json!({"create_at": "x"})));
        assert!(
            err.to_string().contains("unknown field `create_at`"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"status": "done"})));
        assert!(err.to_string().contains("unknown variant `done`"), "{err}");
        assert!(err.to_string().contains("`succeeded`"), "{err}");

        let err = first_error(&workflow(json!({"created_at": "2026-01-02T03:04:05"})));
        assert_eq!(
            err.to_string(),
            "workflow #1 (id \"wf-9\"): created_at: timestamp \"2026-01-02T03:04:05\" has no time \
             zone; add \"Z\" for UTC or an offset such as \"+01:00\" (e.g. \"2026-11-26T21:08:55Z\")"
        );

        let err = first_error(&workflow(json!({"steps": [
            {"id": "a", "status": "completed", "started_at": "2026-01-02T03:04:05Z", "ended_at": "soon"}
        ]})));
        assert!(
            err.to_string()
                .starts_with("workflow #1 (id \"wf-9\"): steps[0].ended_at: timestamp \"soon\""),
            "{err}"
        );

        let err = first_error(&workflow(
            json!({"status": "succeeded", "completed_at": "2026-01-03T00:00:00Z"}),
        ));
        assert!(matches!(*err.kind, ImportErrorKind::Invalid(_)));
        assert!(
            err.to_string()
                .ends_with("a succeeded workflow cannot have step \"a\" in status pending"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"status": "failed"})));
        assert!(
            err.to_string()
                .ends_with("a failed workflow needs a completion time"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"completed_at": "2026-01-03T00:00:00Z"})));
        assert!(
            err.to_string()
                .ends_with("a running workflow cannot have a completion time"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"steps": [
            {"id": "a", "status": "failed", "attempts": 4, "max_attempts": 3}
        ]})));
        assert!(
            err.to_string()
                .ends_with("step \"a\" has 4 attempts but max_attempts is 3"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"steps": [
            {"id": "a", "status": "running", "attempts": 0}
        ]})));
        assert!(
            err.to_string()
                .ends_with("step \"a\" is running but has 0 attempts"),
            "{err}"
        );

        let err = first_error(&workflow(
            json!({"steps": [{"id": "a", "status": "pending"}, {"id": "a", "status": "pending"}]}),
        ));
        assert!(
            err.to_string()
                .ends_with("step id \"a\" appears more than once"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"id": ""})));
        assert_eq!(err.id.as_deref(), Some(""));
        assert!(
            err.to_string().ends_with("workflow id must not be empty"),
            "{err}"
        );

        let err = first_error(&workflow(json!({"metadata": {"k": 5}})));
        assert!(err.to_string().contains("expected a string"), "{err}");

        let err = first_error(&workflow(json!({"id": "ok"})));
        assert!(matches!(*err.kind, ImportErrorKind::DuplicateId));
        assert_eq!(
            err.to_string(),
            "workflow #1 (id \"ok\"): the id appears more than once in this import"
        );

        let err = first_error(r#"{"workflows": [[1]]}"#);
        assert_eq!(
            err.to_string(),
            "workflow #0: a workflow must be a JSON object, found an array"
        );
    }

    #[test]
    fn bad_documents_are_reported_as_a_whole() {
        let err = parse_document(b"{\"workflows\": [").expect_err("truncated");
        assert!(matches!(*err.kind, ImportErrorKind::Json(_)));
        assert!(
            err.to_string().starts_with("import: not valid JSON"),
            "{err}"
        );

        for (input, message) in [
            (r#"[]"#, "must be a JSON object"),
            (r#"{}"#, "no \"workflows\" array"),
            (r#"{"workflows": {}}"#, "must be an array"),
            (
                r#"{"workflows": [], "extra": 1}"#,
                "unknown top-level field \"extra\"",
            ),
            (
                r#"{"format_version": 2, "workflows": []}"#,
                "format_version 2 is not supported",
            ),
        ] {
            let err = parse_document(input.as_bytes()).expect_err(input);
            assert_eq!(err.index, None);
            assert!(err.to_string().contains(message), "{input}: {err}");
        }
    }

    #[test]
    fn every_bad_workflow_of_a_document_can_be_listed() {
        let doc = r#"{"workflows": [
            {"id": "a", "name": "A", "status": "pending", "created_at": "2026-01-01T00:00:00Z"},
            {"id": "b", "name": "B", "status": "pending"},
            {"id": "c", "name": "C", "status": "pending", "created_at": "2026-01-01T00:00:00Z"},
            {"id": "a", "name": "A", "status": "pending", "created_at": "2026-01-01T00:00:00Z"}
        ]}"#;
        let results: Vec<_> = document_workflows(doc.as_bytes())
            .expect("document")
            .collect();
        assert_eq!(results.len(), 4);
        let bad: Vec<(Option<usize>, Option<String>)> = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(|e| (e.index, e.id.clone()))
            .collect();
        assert_eq!(
            bad,
            vec![(Some(1), Some("b".into())), (Some(3), Some("a".into()))]
        );
    }

    #[test]
    fn json_lines_errors_carry_line_numbers_and_reading_goes_on() {
        let input = concat!(
            r#"{"id": "a", "name": "A", "status": "pending", "created_at": "2026-01-01T00:00:00Z"}"#,
            "\n",
            "\n",
            "{not json\n",
            r#"{"id": "b", "name": "B", "status": "pending", "created_at": "2026-01-01T00:00:00"}"#,
            "\n",
            r#"{"id": "c", "name": "C", "status": "pending", "created_at": "2026-01-01T00:00:00Z"}"#,
            "\n",
        );
        let results: Vec<_> = JsonLinesReader::new(input.as_bytes()).collect();
        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok());
        let err = results[1].as_ref().expect_err("bad json");
        assert_eq!(
            (err.index, err.line, err.id.as_deref()),
            (Some(1), Some(3), None)
        );
        assert!(
            err.to_string()
                .starts_with("workflow #1 (line 3): not valid JSON"),
            "{err}"
        );
        let err = results[2].as_ref().expect_err("no zone");
        assert!(
            err.to_string()
                .starts_with("workflow #2 (id \"b\", line 4): created_at: timestamp"),
            "{err}"
        );
        assert_eq!(
            results[3].as_ref().map(|s| s.workflow_id.as_str()).ok(),
            Some("c")
        );
        // The convenience function stops at the first error.
        let err = parse_json_lines(input.as_bytes()).expect_err("bad");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn over_long_lines_are_skipped_with_an_error() {
        let good = r#"{"id": "a", "name": "A", "status": "pending", "created_at": "2026-01-01T00:00:00Z"}"#;
        let long = format!("{{\"id\": \"{}\"}}", "x".repeat(500));
        let input = format!("{long}\n{good}\n{long}");
        let results: Vec<_> = JsonLinesReader::new(input.as_bytes())
            .with_max_line_bytes(good.len())
            .collect();
        assert_eq!(results.len(), 3);
        let err = results[0].as_ref().expect_err("too long");
        assert!(matches!(*err.kind, ImportErrorKind::LineTooLong { .. }));
        assert_eq!(err.line, Some(1));
        assert!(results[1].is_ok(), "a line of exactly the limit is fine");
        assert!(results[2].is_err());
        assert_eq!(results[2].as_ref().err().and_then(|e| e.line), Some(3));
    }

    /// Generates JSON Lines on the fly, so the whole input never exists in memory at once.
    struct Generated {
        next: usize,
        total: usize,
        pending: Vec<u8>,
    }

    impl Read for Generated {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                if self.next == self.total {
                    return Ok(0);
                }
                self.pending = format!(
                    "{{\"id\":\"wf-{}\",\"name\":\"n\",\"status\":\"running\",\"created_at\":\"2026-01-01T00:00:00Z\",\"steps\":[{{\"id\":\"s\",\"status\":\"running\"}}]}}\n",
                    self.next
                )
                .into_bytes();
                self.next += 1;
            }
            let n = out.len().min(self.pending.len());
            out[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn json_lines_stream_without_loading_the_input() {
        let source = Generated {
            next: 0,
            total: 20_000,
            pending: Vec::new(),
        };
        let reader = JsonLinesReader::new(io::BufReader::with_capacity(64, source));
        let mut count = 0;
        for result in reader {
            let state = result.expect("valid");
            assert_eq!(state.steps[0].attempts, 1);
            count += 1;
        }
        assert_eq!(count, 20_000);
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn read_errors_end_the_stream() {
        let mut reader = JsonLinesReader::new(io::BufReader::new(Failing));
        let err = reader.next().expect("an item").expect_err("io error");
        assert!(matches!(*err.kind, ImportErrorKind::Io(_)));
        assert_eq!(
            err.to_string(),
            "import (line 1): cannot read the input: disk on fire"
        );
        assert!(reader.next().is_none());
    }

    #[test]
    fn step_defaults() {
        let doc = r#"{"workflows": [{"id": "w", "name": "W", "status": "running",
            "created_at": "2026-01-01T00:00:00Z",
            "steps": [
              {"id": "p", "status": "pending"},
              {"id": "r", "status": "running", "worker": "w1"},
              {"id": "f", "status": "failed", "attempts": 2},
              {"id": "c", "status": "completed", "output": [1, 2]}
            ]}]}"#;
        let state = parse_document(doc.as_bytes()).expect("valid").remove(0);
        let summary: Vec<(&str, &str, u32, u32)> = state
            .steps
            .iter()
            .map(|s| (s.id.as_str(), s.name.as_str(), s.attempts, s.max_attempts))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("p", "p", 0, 1),
                ("r", "r", 1, 1),
                ("f", "f", 2, 2),
                ("c", "c", 1, 1)
            ]
        );
        assert_eq!(state.steps[1].worker.as_deref(), Some("w1"));
        assert_eq!(state.steps[2].retryable, None);
        assert_eq!(state.current_step.as_deref(), Some("r"));
    }
}
