//! What a task request may hold: only what every store keeps and reads
//! back. PostgreSQL's `jsonb` and `text` cannot hold U+0000, and the JSON
//! reader gives up past 128 levels of nesting (a task whose rows cannot be
//! read back would fail every claim that meets it), so the engine refuses
//! such a request before anything is stored, the same way in embedded mode
//! and against PostgreSQL.

use serde_json::Value;

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// The deepest nesting of a task's context (objects and arrays), well
/// inside what the stores read back.
pub const MAX_CONTEXT_DEPTH: usize = 64;

/// Why a request's context or idempotency key cannot be stored.
pub fn check(context: &Value, idempotency_key: Option<&str>) -> Result<(), String> {
    if let Some(key) = idempotency_key {
        if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(format!(
                "the idempotency key is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_BYTES}",
                key.len()
            ));
        }
        if key.contains('\0') {
            return Err("the idempotency key holds a NUL character (U+0000)".into());
        }
    }
    // Depth first, without recursion: a path to each value and its depth.
    let mut stack: Vec<(String, &Value, usize)> = vec![("context".into(), context, 0)];
    while let Some((path, value, depth)) = stack.pop() {
        match value {
            Value::String(s) if s.contains('\0') => {
                return Err(format!(
                    "{path} holds a NUL character (U+0000), which cannot be stored"
                ))
            }
            Value::Array(_) | Value::Object(_) if depth >= MAX_CONTEXT_DEPTH => {
                return Err(format!(
                    "the context nests deeper than {MAX_CONTEXT_DEPTH} levels (at {path})"
                ));
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    stack.push((format!("{path}[{i}]"), v, depth + 1));
                }
            }
            Value::Object(fields) => {
                for (k, v) in fields {
                    if k.contains('\0') {
                        return Err(format!(
                            "a key of {path} holds a NUL character (U+0000), which cannot be stored"
                        ));
                    }
                    stack.push((format!("{path}.{k}"), v, depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn what_cannot_be_stored_is_named() {
        assert_eq!(
            check(&json!({ "n": 6, "s": "ok" }), Some("order-7")),
            Ok(())
        );
        assert_eq!(check(&nested(MAX_CONTEXT_DEPTH), None), Ok(()));
        let deep = check(&nested(125), None).unwrap_err();
        assert!(
            deep.starts_with("the context nests deeper than 64 levels (at context.a.a"),
            "{deep}"
        );
        assert_eq!(
            check(&json!({ "items": ["x", "a\u{0}b"] }), None),
            Err("context.items[1] holds a NUL character (U+0000), which cannot be stored".into())
        );
        assert!(check(&json!({ "k\u{0}": 1 }), None)
            .unwrap_err()
            .contains("a key of context"));
        let long = "k".repeat(20_000);
        assert_eq!(
            check(&json!({}), Some(&long)),
            Err("the idempotency key is 20000 bytes long; at most 255".into())
        );
        assert!(check(&json!({}), Some("a\u{0}"))
            .unwrap_err()
            .contains("NUL"));
    }
}
