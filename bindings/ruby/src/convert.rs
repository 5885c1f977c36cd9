//! JSON values to and from Ruby objects, without JSON text in between.
//! Hash keys may be Strings or Symbols (they become Strings); Integers
//! beyond 64 bits travel as decimal Strings (the engine's JSON has no wider
//! integers); NaN and infinities are refused, as JSON has none.

use magnus::rb_sys::AsRawValue;
use magnus::{
    value::ReprValue, Error, Float, Integer, RArray, RHash, RString, Ruby, Symbol, Value,
};
use serde_json::{Map, Number};

pub fn to_ruby(ruby: &Ruby, value: &serde_json::Value) -> Result<Value, Error> {
    Ok(match value {
        serde_json::Value::Null => ruby.qnil().as_value(),
        serde_json::Value::Bool(true) => ruby.qtrue().as_value(),
        serde_json::Value::Bool(false) => ruby.qfalse().as_value(),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ruby.integer_from_i64(i).as_value()
            } else if let Some(u) = n.as_u64() {
                ruby.integer_from_u64(u).as_value()
            } else {
                ruby.float_from_f64(n.as_f64().unwrap_or(f64::NAN))
                    .as_value()
            }
        }
        serde_json::Value::String(s) => ruby.str_new(s).as_value(),
        // Ruby's own functions rather than magnus's: magnus guards each
        // insertion with `rb_protect` (a setjmp), which cost more than the
        // insertion itself, and neither of these raises for a new container.
        serde_json::Value::Array(items) => {
            let array = ruby.ary_new_capa(items.len());
            for item in items {
                let item = to_ruby(ruby, item)?;
                // SAFETY: both are live Ruby objects (the item on this stack,
                // which Ruby's GC scans); appending to a new Array cannot raise.
                unsafe { rb_sys::rb_ary_push(array.as_raw(), item.as_raw()) };
            }
            array.as_value()
        }
        serde_json::Value::Object(map) => {
            let hash = ruby.hash_new();
            for (k, v) in map {
                let v = to_ruby(ruby, v)?;
                // A frozen, deduplicated key: a Hash copies any other String
                // key it is given, and a view repeats the same few keys.
                // SAFETY: `k` is valid UTF-8 for its length; the key, value
                // and Hash are live (on this stack); inserting a frozen String
                // into a new Hash cannot raise.
                unsafe {
                    let key = rb_sys::rb_enc_interned_str(
                        k.as_ptr().cast(),
                        k.len() as std::os::raw::c_long,
                        rb_sys::rb_utf8_encoding(),
                    );
                    rb_sys::rb_hash_aset(hash.as_raw(), key, v.as_raw());
                }
            }
            hash.as_value()
        }
    })
}

/// The JSON value of a Ruby object; the TypeError names what is not JSON and where.
pub fn from_ruby(ruby: &Ruby, value: Value) -> Result<serde_json::Value, Error> {
    from_ruby_at(ruby, value, &mut String::from("$"))
}

fn type_error(ruby: &Ruby, message: String) -> Error {
    Error::new(ruby.exception_type_error(), message)
}

fn from_ruby_at(ruby: &Ruby, value: Value, path: &mut String) -> Result<serde_json::Value, Error> {
    if value.is_nil() {
        return Ok(serde_json::Value::Null);
    }
    if value.is_kind_of(ruby.class_true_class()) {
        return Ok(serde_json::Value::Bool(true));
    }
    if value.is_kind_of(ruby.class_false_class()) {
        return Ok(serde_json::Value::Bool(false));
    }
    if let Some(i) = Integer::from_value(value) {
        if let Ok(n) = i.to_i64() {
            return Ok(n.into());
        }
        if let Ok(n) = i.to_u64() {
            return Ok(n.into());
        }
        return Ok(serde_json::Value::String(value.to_r_string()?.to_string()?));
    }
    if let Some(f) = Float::from_value(value) {
        let f = f.to_f64();
        return Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| {
                type_error(ruby, format!("{path} is {f}, which JSON cannot represent"))
            });
    }
    if let Some(s) = RString::from_value(value) {
        return Ok(serde_json::Value::String(s.to_string()?));
    }
    if let Some(s) = Symbol::from_value(value) {
        return Ok(serde_json::Value::String(s.name()?.into_owned()));
    }
    if let Some(hash) = RHash::from_value(value) {
        let mut map = Map::with_capacity(hash.len());
        let mut failure = None;
        hash.foreach(|k: Value, v: Value| {
            let key = if let Some(s) = RString::from_value(k) {
                s.to_string()?
            } else if let Some(s) = Symbol::from_value(k) {
                s.name()?.into_owned()
            } else if Integer::from_value(k).is_some() {
                k.to_r_string()?.to_string()?
            } else {
                failure = Some(type_error(
                    ruby,
                    format!(
                        "{path} has a key of class {}, which JSON cannot represent",
                        class_name(k)
                    ),
                ));
                return Ok(magnus::r_hash::ForEach::Stop);
            };
            let len = path.len();
            path.push('.');
            path.push_str(&key);
            match from_ruby_at(ruby, v, path) {
                Ok(v) => {
                    map.insert(key, v);
                }
                Err(e) => {
                    failure = Some(e);
                    return Ok(magnus::r_hash::ForEach::Stop);
                }
            }
            path.truncate(len);
            Ok(magnus::r_hash::ForEach::Continue)
        })?;
        return match failure {
            Some(e) => Err(e),
            None => Ok(serde_json::Value::Object(map)),
        };
    }
    if let Some(array) = RArray::from_value(value) {
        let mut items = Vec::with_capacity(array.len());
        for (i, item) in array.into_iter().enumerate() {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            items.push(from_ruby_at(ruby, item, path)?);
            path.truncate(len);
        }
        return Ok(serde_json::Value::Array(items));
    }
    Err(type_error(
        ruby,
        format!(
            "{path} is a {}, which is not a JSON value",
            class_name(value)
        ),
    ))
}

fn class_name(value: Value) -> String {
    // SAFETY: the class name is copied out at once.
    unsafe { value.classname() }.into_owned()
}
