//! Cache keys: SHA-256 over a canonical rendering of the request.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields that never change an answer: who asked, how usage is reported,
/// what the upstream should store. Dropped before hashing.
const IGNORED: &[&str] = &["user", "stream_options", "metadata", "store", "cache", "service_tier"];

/// A cache key: hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(pub String);

impl CacheKey {
    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a cache key is made of.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// The endpoint (`chat`, `completions`, `embeddings`).
    pub endpoint: &'a str,
    /// The public model name asked for.
    pub model: &'a str,
    /// The request body as it goes upstream (the gateway's own fields removed).
    pub body: &'a Value,
    /// The caller's key hash when entries are kept per key.
    pub scope: Option<&'a str>,
}

/// The exact-match key of a request. Object keys are sorted, so two bodies
/// that differ only in field order share a key; `model` is replaced by the
/// public name, and `stream: false` is the same as no `stream`.
pub fn exact_key(parts: KeyParts<'_>) -> CacheKey {
    let mut hasher = Sha256::new();
    hasher.update(b"switchyard-cache-v1\0");
    hasher.update(parts.endpoint.as_bytes());
    hasher.update(b"\0");
    hasher.update(parts.model.as_bytes());
    hasher.update(b"\0");
    if let Some(scope) = parts.scope {
        hasher.update(scope.as_bytes());
    }
    hasher.update(b"\0");
    let mut out = Vec::with_capacity(256);
    if let Value::Object(map) = parts.body {
        let mut fields: Vec<(&String, &Value)> = map
            .iter()
            .filter(|(k, v)| {
                let k = k.as_str();
                !IGNORED.contains(&k) && k != "model" && (k != "stream" || is_true(v))
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in fields {
            canonical(&Value::String(k.clone()), &mut out);
            out.push(b':');
            canonical(v, &mut out);
            out.push(b',');
        }
    } else {
        canonical(parts.body, &mut out);
    }
    hasher.update(&out);
    CacheKey(hex::encode(hasher.finalize()))
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// JSON with object keys sorted at every depth.
fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(&Value::String(k.clone()), out);
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(body: Value, scope: Option<&str>) -> CacheKey {
        exact_key(KeyParts {
            endpoint: "chat",
            model: "m",
            body: &body,
            scope,
        })
    }

    #[test]
    fn field_order_user_and_stream_options_do_not_matter() {
        let a = key(
            json!({"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"user":"a"}),
            None,
        );
        let b = key(
            json!({"temperature":0.2,"messages":[{"content":"hi","role":"user"}],"stream":false,"user":"b","stream_options":{"include_usage":true}}),
            None,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn everything_that_changes_the_answer_changes_the_key() {
        let base = json!({"messages":[{"role":"user","content":"hi"}]});
        let k0 = key(base.clone(), None);
        let variants = [
            json!({"messages":[{"role":"user","content":"hi!"}]}),
            json!({"messages":[{"role":"user","content":"hi"}],"temperature":0.5}),
            json!({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}),
            json!({"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}),
            json!({"messages":[{"role":"user","content":"hi"}],"stream":true}),
            json!({"messages":[{"role":"user","content":"hi"}],"max_tokens":5}),
        ];
        for v in variants {
            assert_ne!(key(v.clone(), None), k0, "{v}");
        }
        assert_ne!(key(base.clone(), Some("k1")), k0);
        assert_ne!(key(base.clone(), Some("k1")), key(base.clone(), Some("k2")));
        let other_model = exact_key(KeyParts {
            endpoint: "chat",
            model: "other",
            body: &base,
            scope: None,
        });
        assert_ne!(other_model, k0);
    }
}
