//! Cache keys: SHA-256 over a canonical rendering of the request.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields that never change an answer: who asked, what the upstream
/// should store or cache. Dropped before hashing (so is `stream_options`'
/// `include_usage`, which only says whether usage is reported).
const IGNORED: &[&str] = &[
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "metadata",
    "store",
    "cache",
    "service_tier",
];

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
/// that differ only in field order share a key, except a JSON Schema's
/// `properties`, whose order is the order a model writes them in; `model`
/// is replaced by the public name, and `stream: false` is the same as no
/// `stream`.
pub fn exact_key(parts: KeyParts<'_>) -> CacheKey {
    let mut hasher = Sha256::new();
    // v2: schema property order counts, and more fields are ignored.
    hasher.update(b"switchyard-cache-v2\0");
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
        let stream_options = map.get("stream_options").and_then(Value::as_object).map(|options| {
            let mut options = options.clone();
            options.remove("include_usage");
            Value::Object(options)
        });
        let mut fields: Vec<(&String, &Value)> = map
            .iter()
            .filter(|(k, v)| {
                let k = k.as_str();
                !IGNORED.contains(&k) && k != "model" && (k != "stream" || is_true(v))
            })
            .map(|(k, v)| match (k.as_str(), &stream_options) {
                ("stream_options", Some(options)) => (k, options),
                _ => (k, v),
            })
            // `stream_options` of nothing but `include_usage`, or not an
            // object at all (`null`), changes nothing.
            .filter(|(k, v)| k.as_str() != "stream_options" || v.as_object().is_some_and(|o| !o.is_empty()))
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in fields {
            canonical(&Value::String(k.clone()), false, &mut out);
            out.push(b':');
            canonical(v, false, &mut out);
            out.push(b',');
        }
    } else {
        canonical(parts.body, false, &mut out);
    }
    hasher.update(&out);
    CacheKey(hex::encode(hasher.finalize()))
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// JSON with object keys sorted at every depth, but those of an object
/// that is a JSON Schema's `properties` (`in_order`), kept as sent.
fn canonical(value: &Value, in_order: bool, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            if !in_order {
                fields.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push(b'{');
            for (i, (k, v)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(&Value::String(k.clone()), false, out);
                out.push(b':');
                // A property named `properties` is not a schema keyword.
                canonical(v, !in_order && k == "properties", out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, false, out);
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
        // Who asks, and how the upstream caches the prompt, change nothing.
        let c = key(
            json!({"messages":[{"role":"user","content":"hi"}],"temperature":0.2,"safety_identifier":"u1","prompt_cache_key":"p1"}),
            None,
        );
        assert_eq!(a, c);
    }

    /// A schema's property order is the order of the answer's fields; other
    /// stream options change what a stream carries.
    #[test]
    fn schema_property_order_and_other_stream_options_change_the_key() {
        let schema = |properties: Value| {
            json!({"messages":[{"role":"user","content":"hi"}],
                "response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object","properties":properties}}}})
        };
        let reasoning_first = schema(json!({"reasoning":{"type":"string"},"answer":{"type":"string"}}));
        let answer_first = schema(json!({"answer":{"type":"string"},"reasoning":{"type":"string"}}));
        assert_ne!(key(reasoning_first.clone(), None), key(answer_first, None));
        // Inside a property, keys are sorted as elsewhere.
        let reordered = schema(json!({"reasoning":{"type":"string"},"answer":{"type":"string"}}));
        assert_eq!(key(reasoning_first, None), key(reordered, None));
        let stream = |options: Value| key(json!({"messages":[],"stream":true,"stream_options":options}), None);
        assert_eq!(stream(json!({"include_usage": true})), stream(json!({})));
        assert_eq!(
            stream(json!({"include_usage": true})),
            key(json!({"messages":[],"stream":true}), None)
        );
        assert_ne!(
            stream(json!({"continuous_usage_stats": true})),
            stream(json!({"include_usage": true}))
        );
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
