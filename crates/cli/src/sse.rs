//! A minimal `text/event-stream` reader: frames split on blank lines, `event:`, `id:`, `data:` (joined by newlines)
//! and comments. Used by `evershell activity --follow` (and by the tests and the SSE benchmark).

/// One frame: an event (`data` set) or a comment (`comment` set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
}

/// Largest frame accepted; a server that never ends a frame is cut off.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Bytes in, frames out.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Add `chunk` and return the frames it completed.
    pub fn push(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<Frame>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = find_blank_line(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&raw[..end.0]).replace("\r\n", "\n");
            out.push(parse(&text));
        }
        anyhow::ensure!(
            self.buf.len() <= MAX_FRAME_BYTES,
            "an event-stream frame is larger than {MAX_FRAME_BYTES} bytes"
        );
        Ok(out)
    }
}

/// `(end of frame text, end of separator)` of the first blank line.
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

fn parse(text: &str) -> Frame {
    let mut f = Frame::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if let Some(c) = line.strip_prefix(':') {
            f.comment = Some(c.trim_start().to_string());
            continue;
        }
        let (k, v) = line.split_once(':').map(|(k, v)| (k, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
        match k {
            "event" => f.event = Some(v.to_string()),
            "id" => f.id = Some(v.to_string()),
            "data" => data.push(v),
            _ => {}
        }
    }
    if !data.is_empty() {
        f.data = Some(data.join("\n"));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks() {
        let mut p = Parser::default();
        assert!(p.push(b"event: activity\nid: 1\nda").unwrap().is_empty());
        let f = p.push(b"ta: {\"a\":1}\n\n: heartbeat\n\n").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].event.as_deref(), Some("activity"));
        assert_eq!(f[0].id.as_deref(), Some("1"));
        assert_eq!(f[0].data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(f[1].comment.as_deref(), Some("heartbeat"));
        assert!(p.push(b"data: x\r\n\r\n").unwrap()[0].data.as_deref() == Some("x"));
    }
}
