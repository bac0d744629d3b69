//! Request extractors that fail with the envelope: `Json<T>` (malformed JSON, wrong types, unknown or missing
//! fields → 400 naming the field in `details.fields`; too large → 413; another `Content-Type` → 415) and `Params` (the query string, with typed
//! getters that answer 400 naming the parameter).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use evershell_core::{Error, ErrorCode, FieldErrors};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::error::ApiError;

/// A JSON request body.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(axum::http::header::CONTENT_TYPE)
            && !ct.as_bytes().starts_with(b"application/json")
        {
            return Err(Error::new(ErrorCode::UnsupportedMediaType, "Content-Type must be application/json").into());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::new(ErrorCode::PayloadTooLarge, "the request body is larger than the configured limit")
            } else {
                Error::invalid_field("body", rej.body_text())
            }
        })?;
        parse_json(&bytes).map(Json).map_err(ApiError)
    }
}

/// Deserialize JSON, turning serde's error into a validation error that names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = String::new();
        for seg in e.path().iter() {
            match seg {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Segment::Unknown => {}
            }
        }
        let inner = e.into_inner();
        let msg = inner.to_string();
        let named = |prefix: &str| -> Option<String> {
            let rest = msg.strip_prefix(prefix)?;
            let name = rest.split('`').next()?;
            // serde_path_to_error already ends the path with the unknown key; a missing field's is its parent.
            Some(if path.is_empty() || path == name || path.ends_with(&format!(".{name}")) {
                if path.is_empty() { name.to_string() } else { path.clone() }
            } else {
                format!("{path}.{name}")
            })
        };
        if let Some(field) = named("unknown field `") {
            return Error::invalid_field(field, "unknown field");
        }
        if let Some(field) = named("missing field `") {
            return Error::invalid_field(field, "is required");
        }
        if inner.is_syntax() || inner.is_eof() {
            return Error::invalid_field("body", format!("malformed JSON: {msg}"));
        }
        let field = if path.is_empty() { "body".to_string() } else { path };
        // Drop serde's " at line 1 column 12" suffix: the field name says where.
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Error::invalid_field(field, msg)
    })
}

/// The query string as name/value pairs.
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        Ok(Params(form_urlencoded::parse(q.as_bytes()).into_owned().collect()))
    }
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name || k == &format!("{name}[]")).map(|(_, v)| v.clone()).collect()
    }

    /// `true`/`false` (also `1`/`0`); absent is `default`.
    pub fn flag(&self, errs: &mut FieldErrors, name: &str, default: bool) -> bool {
        match self.get(name) {
            None => default,
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(_) => {
                errs.add(name, "must be true or false");
                default
            }
        }
    }

    /// A non-negative integer no larger than `max`.
    pub fn uint(&self, errs: &mut FieldErrors, name: &str, max: u64) -> Option<u64> {
        let v = self.get(name)?;
        match v.parse::<u64>() {
            Ok(n) if n <= max => Some(n),
            _ => {
                errs.add(name, format!("must be an integer from 0 to {max}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        tags: Vec<u32>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    fn field_of(json: &str) -> (String, String) {
        let e = parse_json::<Outer>(json.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationError);
        let fields = e.details.unwrap()["fields"].as_object().unwrap().clone();
        let (k, v) = fields.into_iter().next().unwrap();
        (k, v.as_str().unwrap().to_string())
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(field_of(r#"{"inner":{"name":"a","tags":[1],"x":1}}"#).0, "inner.x");
        assert_eq!(field_of(r#"{"inner":{"name":"a"}}"#).0, "inner.tags");
        assert_eq!(field_of(r#"{"inner":{"name":5,"tags":[]}}"#).0, "inner.name");
        assert_eq!(field_of(r#"{"inner":{"name":"a","tags":[1,"x"]}}"#).0, "inner.tags[1]");
        assert_eq!(field_of(r#"{"inner":"#).0, "body");
        assert_eq!(field_of("").0, "body");
        assert_eq!(field_of(r#"{"other":1}"#).0, "other");
    }
}
