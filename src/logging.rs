//! The router's log output, for people and for log pipelines (issue 17,
//! "Logs for log pipelines"): `--log-format text` (the default) writes
//! tracing's human format, with colours only when stderr is a terminal, so
//! `kubectl logs` and collectors never see ANSI escapes; `--log-format json`
//! writes one JSON object per line (`timestamp`, `level`, `target`,
//! `fields` with `message`, and the enclosing `spans`), the shape Loki,
//! Elasticsearch and Cloud Logging parse without a custom pipeline.
//!
//! The level comes from `WEFT_LOG`, else `RUST_LOG` (tracing's filter syntax,
//! e.g. `info,weft::kube=debug`), else `info`. A filter that does not parse
//! is reported in one warning and `info` is used.
//!
//! This module owns only the subscriber set-up; what is logged, at which
//! level, is each module's business (STYLE.md "Logging").

use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written (`--log-format`, `WEFT_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// tracing's human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The filter used when neither `WEFT_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "info";

/// The filter text: `WEFT_LOG`, else `RUST_LOG`, else [`DEFAULT_FILTER`]
/// (an empty variable counts as unset).
pub fn filter_text(weft_log: Option<String>, rust_log: Option<String>) -> String {
    [weft_log, rust_log]
        .into_iter()
        .flatten()
        .find(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_FILTER.to_string())
}

/// Installs the global subscriber writing to stderr. Call once, early.
pub fn init(format: LogFormat) {
    let text = filter_text(
        std::env::var("WEFT_LOG").ok(),
        std::env::var("RUST_LOG").ok(),
    );
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(&text) {
        Ok(filter) => (filter, None),
        Err(e) => (tracing_subscriber::EnvFilter::new(DEFAULT_FILTER), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).init(),
    }
    if let Some(e) = bad {
        tracing::warn!(
            "the log filter {text:?} (WEFT_LOG or RUST_LOG) does not parse ({e}); logging at {DEFAULT_FILTER}"
        );
    }
}

/// Formats each event as one JSON object on one line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let spans: Vec<Value> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| {
                let mut entry = Map::new();
                entry.insert("name".into(), span.name().into());
                if let Some(formatted) = span.extensions().get::<FormattedFields<N>>()
                    && !formatted.is_empty()
                {
                    entry.insert("fields".into(), formatted.as_str().into());
                }
                Value::Object(entry)
            })
            .collect();
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("fields".into(), Value::Object(fields));
        if !spans.is_empty() {
            line.insert("spans".into(), Value::Array(spans));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields as JSON values (numbers and booleans stay
/// typed; everything else is its `Display` or `Debug` text).
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn weft_log_wins_over_rust_log_and_info_is_the_default() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(filter_text(some("debug"), some("warn")), "debug");
        assert_eq!(filter_text(None, some("warn")), "warn");
        assert_eq!(filter_text(some(" "), some("warn")), "warn");
        assert_eq!(filter_text(None, None), "info");
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_holds_the_level_target_typed_fields_and_spans() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("connection", peer = "n1");
            let _entered = span.enter();
            tracing::warn!(addresses = 42u64, ok = true, name = %"n2", "donated \"x\"");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["fields"]["message"], "donated \"x\"");
        assert_eq!(line["fields"]["addresses"], 42);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["fields"]["name"], "n2");
        assert_eq!(line["spans"][0]["name"], "connection");
        assert!(line["timestamp"].as_str().unwrap().contains('T'), "{line}");
    }
}
