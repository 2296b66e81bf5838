//! Canonical JSON, the one byte form that policy signatures and receipt MACs cover.

use serde_json::Value;

/// JSON with object keys sorted by their UTF-8 bytes and no whitespace; strings escaped and
/// numbers printed as serde_json does (deterministic). Independent of map-ordering features,
/// so signer and verifier always agree.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_keys_at_every_depth_and_drops_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{ "b": [ {"z": 1, "a": "x\"y"} ], "a": null }"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":null,"b":[{"a":"x\"y","z":1}]}"#);
        let b: Value = serde_json::from_str(r#"{"a":null,"b":[{"z":1,"a":"x\"y"}]}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn orders_keys_by_bytes() {
        let v: Value = serde_json::from_str(r#"{"é":1,"Z":2,"a":3}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"Z":2,"a":3,"é":1}"#);
    }
}
