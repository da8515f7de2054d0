//! Span fields for the JSON log, written once as a JSON object.
//!
//! `tracing-subscriber`'s own JSON field formatter builds a map of
//! `serde_json::Value`s for every span and, each time a field is recorded on
//! a span later (a status code when the answer is known), parses the span's
//! fields back and encodes them again. Every request's span pays that, even
//! when no line is ever logged inside it. This formatter writes the fields
//! straight into the span's string and appends later fields to it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats a span's fields as one JSON object and appends fields recorded
/// later to it without re-reading it. A field recorded twice appears twice in
/// the stored object; the JSON log's reader keeps the last value.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AppendJsonFields;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = JsonFieldVisitor {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        if current.fields.pop() != Some('}') {
            // Not written by this formatter: start again rather than extend
            // something that is not an object.
            current.fields.clear();
            return self.format_fields(current.as_writer(), fields);
        }
        let first = current.fields.ends_with('{');
        let mut visitor = JsonFieldVisitor {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// Writes `"name":value` pairs, comma-separated.
struct JsonFieldVisitor<'a> {
    out: &'a mut dyn fmt::Write,
    first: bool,
    result: fmt::Result,
}

impl JsonFieldVisitor<'_> {
    /// Writes the separator and the quoted name; `None` for a field that is
    /// not written (log metadata) or once writing has failed.
    fn key(&mut self, field: &Field) -> Option<&mut dyn fmt::Write> {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return None;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let sep = if self.first { "" } else { "," };
        self.first = false;
        self.result = self
            .out
            .write_str(sep)
            .and_then(|()| write_json_str(self.out, name))
            .and_then(|()| self.out.write_char(':'));
        self.result.is_ok().then_some(&mut *self.out)
    }

    fn value(&mut self, field: &Field, write: impl FnOnce(&mut dyn fmt::Write) -> fmt::Result) {
        if let Some(out) = self.key(field) {
            self.result = write(out);
        }
    }
}

impl Visit for JsonFieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // As `serde_json` does: a number that JSON cannot hold is null.
        self.value(field, |out| {
            if value.is_finite() {
                write!(out, "{value}")
            } else {
                out.write_str("null")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, |out| write_json_str(out, value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.value(field, |out| {
            out.write_char('[')?;
            for (i, b) in value.iter().enumerate() {
                if i > 0 {
                    out.write_char(',')?;
                }
                write!(out, "{b}")?;
            }
            out.write_char(']')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.value(field, |out| {
            out.write_char('"')?;
            write!(Escaping(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// Writes `s` as a JSON string, quotes included.
fn write_json_str(out: &mut dyn fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(&mut *out).write_str(s)?;
    out.write_char('"')
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaping<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escaped = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if u32::from(c) < 0x20 => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{:04x}", u32::from(c))?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(AppendJsonFields)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[derive(Debug)]
    #[allow(dead_code, reason = "read through Debug only")]
    struct Shown {
        name: &'static str,
    }

    #[test]
    fn span_fields_and_later_records_reach_the_log_as_json() {
        let lines = log_lines(|| {
            let span = tracing::info_span!(
                "request",
                path = "/v1/chat \"quoted\"\n\u{1}\\ é",
                n = -3i64,
                u = 7u64,
                ok = true,
                ratio = 0.25f64,
                bad = f64::NAN,
                shown = ?Shown { name: "a\"b" },
                r#type = "raw",
                status = tracing::field::Empty,
                other = tracing::field::Empty,
            );
            let _in = span.enter();
            span.record("status", 200i64);
            span.record("other", "x");
            span.record("status", 502i64);
            tracing::info!(answer = 1, "done");
        });
        assert_eq!(lines.len(), 1);
        let spans = lines[0]["spans"].as_array().unwrap();
        let fields = &spans[0];
        assert_eq!(fields["name"], "request");
        assert_eq!(fields["path"], "/v1/chat \"quoted\"\n\u{1}\\ é");
        assert_eq!(fields["n"], -3);
        assert_eq!(fields["u"], 7);
        assert_eq!(fields["ok"], true);
        assert_eq!(fields["ratio"], 0.25);
        assert!(fields["bad"].is_null());
        assert_eq!(fields["shown"], "Shown { name: \"a\\\"b\" }");
        assert_eq!(fields["type"], "raw");
        assert_eq!(fields["other"], "x");
        // Recorded twice: the later value is the one read.
        assert_eq!(fields["status"], 502);
        assert_eq!(lines[0]["message"], "done");
    }

    #[test]
    fn a_span_with_no_fields_until_a_record_is_still_an_object() {
        let lines = log_lines(|| {
            let span = tracing::info_span!("empty", later = tracing::field::Empty);
            let _in = span.enter();
            tracing::info!("before");
            span.record("later", "now");
            tracing::info!("after");
        });
        assert_eq!(lines.len(), 2);
        assert!(lines[0]["spans"][0]["later"].is_null());
        assert_eq!(lines[1]["spans"][0]["later"], "now");
    }
}
