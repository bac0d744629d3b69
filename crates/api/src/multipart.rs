//! A bounded streaming reader of `multipart/form-data` bodies (RFC 7578): parts one after another, each with its
//! `Content-Disposition` name (and file name), its data handed out in chunks as it arrives, so a file part never
//! has to fit in memory. Header blocks, text parts and the number of parts are bounded here; file sizes are the
//! caller's to bound. A malformed or truncated body is a 400 naming `body`.

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use evershell_core::{Error, Result};
use futures::{Stream, StreamExt};

/// Largest header block of one part.
const MAX_HEADERS: usize = 16 * 1024;
/// Largest boundary (RFC 2046 allows 70 characters).
const MAX_BOUNDARY: usize = 70;

fn malformed(why: impl std::fmt::Display) -> Error {
    Error::invalid_field("body", format!("malformed multipart body: {why}"))
}

/// The boundary of a `multipart/form-data` content type (`None`: another content type).
pub fn boundary_of(content_type: &str) -> Option<Result<String>> {
    let mut parts = content_type.split(';');
    let essence = parts.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else { continue };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let b = v.trim().trim_matches('"');
            if b.is_empty() || b.len() > MAX_BOUNDARY || b.bytes().any(|c| c == b'\r' || c == b'\n') {
                return Some(Err(malformed("the boundary is empty, too long or holds a line break")));
            }
            return Some(Ok(b.to_string()));
        }
    }
    Some(Err(malformed("the Content-Type names no boundary")))
}

/// One part's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The form field (`name=`).
    pub name: String,
    /// `filename=`, for a file part.
    pub filename: Option<String>,
}

enum State {
    /// Before the first boundary line.
    Start,
    /// Just after a boundary line: headers or the closing `--` follow.
    Headers,
    /// Inside a part's data.
    Data,
    Done,
}

/// Reads a multipart body part by part.
pub struct Multipart<S> {
    stream: S,
    buf: BytesMut,
    /// `\r\n--boundary`.
    delimiter: Vec<u8>,
    state: State,
    eof: bool,
}

impl Multipart<futures::stream::BoxStream<'static, std::result::Result<Bytes, axum::Error>>> {
    pub fn from_body(body: Body, boundary: &str) -> Self {
        Multipart::new(body.into_data_stream().boxed(), boundary)
    }
}

impl<S, E> Multipart<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(stream: S, boundary: &str) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Self { stream, buf: BytesMut::new(), delimiter, state: State::Start, eof: false }
    }

    /// Read more of the body; `false` at its end.
    async fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.stream.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(Error::invalid_field("body", format!("the request body could not be read: {e}"))),
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// The next part's headers, or `None` after the closing boundary. The previous part's data left unread is
    /// skipped.
    pub async fn next_part(&mut self) -> Result<Option<Part>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Data => while self.chunk().await?.is_some() {},
                State::Start => {
                    // The first boundary may open the body (no CRLF before it); a preamble is skipped.
                    let first = self.delimiter[2..].to_vec();
                    loop {
                        if let Some(at) = find(&self.buf, &first) {
                            let _ = self.buf.split_to(at + first.len());
                            break;
                        }
                        if self.buf.len() > MAX_HEADERS {
                            return Err(malformed("no opening boundary"));
                        }
                        if !self.fill().await? {
                            return Err(malformed("no opening boundary"));
                        }
                    }
                    self.state = State::Headers;
                }
                State::Headers => {
                    while self.buf.len() < 2 {
                        if !self.fill().await? {
                            return Err(malformed("the body ends inside a boundary line"));
                        }
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    let end = loop {
                        if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                            break at;
                        }
                        if self.buf.len() > MAX_HEADERS {
                            return Err(malformed("a part's headers are too long"));
                        }
                        if !self.fill().await? {
                            return Err(malformed("the body ends inside a part's headers"));
                        }
                    };
                    let block = self.buf.split_to(end + 4);
                    // The boundary line's rest (transport padding) then CRLF, then the header lines.
                    let text = std::str::from_utf8(&block).map_err(|_| malformed("headers are not UTF-8"))?;
                    let (pad, headers) = text.split_once("\r\n").ok_or_else(|| malformed("bad boundary line"))?;
                    if !pad.trim().is_empty() {
                        return Err(malformed("text after a boundary"));
                    }
                    self.state = State::Data;
                    return parse_headers(headers).map(Some);
                }
            }
        }
    }

    /// The next piece of the current part's data, or `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        if !matches!(self.state, State::Data) {
            return Ok(None);
        }
        loop {
            if let Some(at) = find(&self.buf, &self.delimiter) {
                if at > 0 {
                    return Ok(Some(self.buf.split_to(at).freeze()));
                }
                let _ = self.buf.split_to(self.delimiter.len());
                self.state = State::Headers;
                return Ok(None);
            }
            // Everything but a possible start of the delimiter is data.
            let safe = self.buf.len().saturating_sub(self.delimiter.len() - 1);
            if safe > 0 {
                return Ok(Some(self.buf.split_to(safe).freeze()));
            }
            if !self.fill().await? {
                return Err(malformed("the body ends inside a part"));
            }
        }
    }

    /// The whole current part as text, at most `max` bytes (else a 400 naming `field`).
    pub async fn text(&mut self, field: &str, max: usize) -> Result<String> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > max {
                return Err(Error::invalid_field(field, format!("is longer than {max} bytes")));
            }
            out.extend_from_slice(&c);
        }
        String::from_utf8(out).map_err(|_| Error::invalid_field(field, "is not UTF-8"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// `Content-Disposition: form-data; name="…"; filename="…"` (other headers are ignored).
fn parse_headers(block: &str) -> Result<Part> {
    for line in block.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else { continue };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut params = split_params(v);
        let kind = params.next().map(|(k, _)| k).unwrap_or_default();
        if !kind.eq_ignore_ascii_case("form-data") {
            return Err(malformed("a part is not form-data"));
        }
        let (mut name, mut filename) = (None, None);
        for (k, v) in params {
            match k.to_ascii_lowercase().as_str() {
                "name" => name = v,
                "filename" => filename = v,
                _ => {}
            }
        }
        let name = name.ok_or_else(|| malformed("a part has no name"))?;
        return Ok(Part { name, filename });
    }
    Err(malformed("a part has no Content-Disposition"))
}

/// `form-data; name="a;b"; filename=x` → `("form-data", None), ("name", Some("a;b")), ("filename", Some("x"))`.
/// Quoted values may hold `;` and backslash-escaped `"` or `\`.
fn split_params(v: &str) -> impl Iterator<Item = (String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = v.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let key = key.trim().to_string();
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            let mut val = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => break,
                        c => val.push(c),
                    }
                }
                while chars.peek().is_some_and(|&c| c != ';') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ';' {
                        break;
                    }
                    val.push(c);
                    chars.next();
                }
                val = val.trim().to_string();
            }
            value = Some(val);
        }
        if !key.is_empty() || value.is_some() {
            out.push((key, value));
        }
        if chars.next().is_none() {
            break;
        }
    }
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(body: &[u8], piece: usize) -> Multipart<impl Stream<Item = std::result::Result<Bytes, String>> + Unpin> {
        let chunks: Vec<std::result::Result<Bytes, String>> =
            body.chunks(piece.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Multipart::new(futures::stream::iter(chunks), "XyZ")
    }

    async fn all(
        mut m: Multipart<impl Stream<Item = std::result::Result<Bytes, String>> + Unpin>,
    ) -> Result<Vec<(Part, Vec<u8>)>> {
        let mut out = vec![];
        while let Some(p) = m.next_part().await? {
            let mut data = vec![];
            while let Some(c) = m.chunk().await? {
                data.extend_from_slice(&c);
            }
            out.push((p, data));
        }
        Ok(out)
    }

    const BODY: &[u8] = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nread it\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a \\\"q\\\"; b.txt\"\r\nContent-Type: text/plain\r\n\r\n\
line\r\n--XyNot yet\r\n--X\r\n--XyZ  \r\ncontent-disposition: form-data; name=file; filename=e.bin\r\n\r\n\r\n--XyZ--\r\nepilogue";

    #[tokio::test]
    async fn parts_in_every_chunking() {
        for piece in [1, 2, 3, 7, 16, 64, BODY.len()] {
            let parts = all(reader(BODY, piece)).await.unwrap();
            assert_eq!(parts.len(), 3, "chunks of {piece}");
            assert_eq!(parts[0].0, Part { name: "description".into(), filename: None });
            assert_eq!(parts[0].1, b"read it");
            assert_eq!(parts[1].0.filename.as_deref(), Some("a \"q\"; b.txt"));
            assert_eq!(parts[1].1, b"line\r\n--XyNot yet\r\n--X", "a near-boundary inside data is data");
            assert_eq!(parts[2].0, Part { name: "file".into(), filename: Some("e.bin".into()) });
            assert_eq!(parts[2].1, b"", "an empty file");
        }
    }

    #[tokio::test]
    async fn skips_unread_data_and_bounds_text() {
        let mut m = reader(BODY, 5);
        let p = m.next_part().await.unwrap().unwrap();
        assert_eq!(m.text(&p.name, 3).await.unwrap_err().code, evershell_core::ErrorCode::ValidationError);
        let mut m = reader(BODY, 5);
        m.next_part().await.unwrap();
        let p = m.next_part().await.unwrap().unwrap();
        assert_eq!(p.filename.as_deref(), Some("a \"q\"; b.txt"), "the first part's data was skipped");
    }

    #[tokio::test]
    async fn malformed_bodies_are_400s() {
        let cut = &BODY[..BODY.len() - 20];
        let no_cd = b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--";
        let not_form = b"--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--XyZ--";
        let huge_headers = [b"--XyZ\r\nX: ".as_slice(), &vec![b'a'; 20_000]].concat();
        for body in [cut, b"no boundary at all".as_slice(), no_cd, not_form, &huge_headers] {
            let e = all(reader(body, 9)).await.unwrap_err();
            assert_eq!(e.code, evershell_core::ErrorCode::ValidationError, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn boundaries_from_content_types() {
        assert!(boundary_of("application/json").is_none());
        assert_eq!(boundary_of("multipart/form-data; boundary=abc").unwrap().unwrap(), "abc");
        assert_eq!(boundary_of("Multipart/Form-Data; charset=x; boundary=\"a b\"").unwrap().unwrap(), "a b");
        assert!(boundary_of("multipart/form-data").unwrap().is_err());
        assert!(boundary_of(&format!("multipart/form-data; boundary={}", "b".repeat(71))).unwrap().is_err());
    }
}
