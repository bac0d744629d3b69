//! Server-sent events from a model's streamed answer: an incremental parser over arbitrary chunk boundaries, with
//! a bound on one event's size (the model endpoint is not trusted to be well-behaved).

/// One SSE event: its `event:` name (empty when absent) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Largest single event accepted.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Where the scan for the next blank line resumes.
    scanned: usize,
}

impl SseParser {
    /// Feed a chunk; returns the events it completed, or an error when one event grows past [`MAX_EVENT_BYTES`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned.max(start);
        while i < self.buf.len() {
            if self.buf[i] == b'\n' {
                // A blank line ends the event: "\n\n" or "\n\r\n".
                let next = &self.buf[i + 1..];
                let end = if next.first() == Some(&b'\n') {
                    Some(i + 2)
                } else if next.starts_with(b"\r\n") {
                    Some(i + 3)
                } else {
                    None
                };
                if let Some(end) = end {
                    if let Some(ev) = parse_block(&self.buf[start..i]) {
                        out.push(ev);
                    }
                    start = end;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        self.buf.drain(..start);
        // Resume one byte early: a "\n" at the very end may begin a blank line.
        self.scanned = self.buf.len().saturating_sub(2);
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(format!("an event of the model's stream exceeds {MAX_EVENT_BYTES} bytes"));
        }
        Ok(out)
    }
}

fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut event = String::new();
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = value.to_string(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    data.map(|data| SseEvent { event, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_any_chunk_boundary() {
        let stream = b"event: a\ndata: {\"x\":1}\n\n: comment\n\ndata: one\ndata: two\r\n\r\nevent: b\ndata:\n\n";
        for split in 1..stream.len() {
            let mut p = SseParser::default();
            let mut evs = Vec::new();
            for c in stream.chunks(split) {
                evs.extend(p.feed(c).unwrap());
            }
            assert_eq!(
                evs,
                vec![
                    SseEvent { event: "a".into(), data: "{\"x\":1}".into() },
                    SseEvent { event: String::new(), data: "one\ntwo".into() },
                    SseEvent { event: "b".into(), data: String::new() },
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 1 << 20];
        let mut failed = false;
        for _ in 0..10 {
            if p.feed(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
