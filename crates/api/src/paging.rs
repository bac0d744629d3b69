//! Cursor pagination of the list routes. The reference lists (providers, roles, memberships, workspaces, keys) are
//! whole arrays with no paging parameters, so without `limit` a list is whole, as documented. With
//! `limit` (1–1000) a list answers one page, and when more follow, `next_cursor` in the body and a `Link: <…>;
//! rel="next"` header; pass `cursor` back unchanged (with the same other parameters) for the next page. Cursors are
//! opaque (base64url of the list kind and the last item's sort key); another list's or a forged one is
//! `400 invalid_cursor`.

use axum::http::{HeaderValue, Uri};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use evershell_core::{Error, ErrorCode, FieldErrors};

use crate::extract::Params;

/// Largest page.
pub const MAX_LIMIT: u64 = 1000;

/// `limit` and the decoded `cursor` of a list request.
#[derive(Debug, Clone, Default)]
pub struct PageParams {
    pub limit: Option<u32>,
    /// The sort key of the last item of the previous page.
    pub after: Option<String>,
}

impl PageParams {
    /// Read `limit` and `cursor` (issued for list `kind`).
    pub fn parse(p: &Params, kind: &str) -> Result<Self, Error> {
        let mut errs = FieldErrors::default();
        let limit = p.uint(&mut errs, "limit", MAX_LIMIT);
        if limit == Some(0) {
            errs.add("limit", format!("must be an integer from 1 to {MAX_LIMIT}"));
        }
        errs.into_result()?;
        let after = p.get("cursor").map(|c| decode(kind, c)).transpose()?;
        Ok(Self { limit: limit.map(|l| l as u32), after })
    }
}

pub fn encode(kind: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}\n{key}"))
}

fn decode(kind: &str, cursor: &str) -> Result<String, Error> {
    let bad = || Error::new(ErrorCode::InvalidCursor, "the cursor is malformed or was issued for another list");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (k, key) = text.split_once('\n').ok_or_else(bad)?;
    if k != kind {
        return Err(bad());
    }
    Ok(key.to_string())
}

/// One page of a list held in memory, ordered by `key` (byte order, the same on every backend): the items after
/// the cursor, at most `limit`, and the next cursor when more follow.
pub fn page<T>(mut items: Vec<T>, kind: &str, key: impl Fn(&T) -> String, pp: &PageParams) -> (Vec<T>, Option<String>) {
    let Some(limit) = pp.limit else { return (items, None) };
    items.sort_by_cached_key(|t| key(t));
    let mut rest: Vec<T> = match &pp.after {
        Some(after) => items.into_iter().filter(|t| key(t).as_str() > after.as_str()).collect(),
        None => items,
    };
    let more = rest.len() > limit as usize;
    rest.truncate(limit as usize);
    let next = more.then(|| rest.last().map(|t| encode(kind, &key(t)))).flatten();
    (rest, next)
}

/// `Link: <path?…&cursor=next>; rel="next"`: the request's own query with `cursor` replaced.
pub fn link(uri: &Uri, next: &str) -> Option<HeaderValue> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k != "cursor" {
            q.append_pair(&k, &v);
        }
    }
    q.append_pair("cursor", next);
    HeaderValue::from_str(&format!("<{}?{}>; rel=\"next\"", uri.path(), q.finish())).ok()
}

/// The JSON answer of a list page, with the `Link` header when a next page exists.
pub fn answer<T: serde::Serialize>(uri: &Uri, body: T, next: Option<&str>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut res = axum::Json(body).into_response();
    if let Some(v) = next.and_then(|n| link(uri, n)) {
        res.headers_mut().insert(axum::http::header::LINK, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_item_once_and_cursors_are_bound_to_their_list() {
        let items: Vec<u32> = (0..25).rev().collect();
        let key = |n: &u32| format!("{n:05}");
        let mut pp = PageParams { limit: Some(10), after: None };
        let mut seen = Vec::new();
        loop {
            let (got, next) = page(items.clone(), "t", key, &pp);
            seen.extend(got);
            match next {
                Some(c) => pp.after = Some(decode("t", &c).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
        assert_eq!(decode("other", &encode("t", "x")).unwrap_err().code, ErrorCode::InvalidCursor);
        assert_eq!(decode("t", "!!").unwrap_err().code, ErrorCode::InvalidCursor);
        let (all, next) = page(items.clone(), "t", key, &PageParams::default());
        assert_eq!((all.len(), next), (25, None), "no limit: the whole list, as documented");
        let uri: Uri = "/v1/providers?include_archived=true&limit=2&cursor=abc".parse().unwrap();
        assert_eq!(
            link(&uri, "xyz").unwrap(),
            "</v1/providers?include_archived=true&limit=2&cursor=xyz>; rel=\"next\""
        );
    }
}
