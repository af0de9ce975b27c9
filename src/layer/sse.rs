//! Server-sent events: a stream split into whole events as they complete, and the
//! fields of one event.

use bytes::{Bytes, BytesMut};

/// Splits an SSE byte stream into whole events, as they complete.
///
/// Every byte is examined once however the stream is chunked: the scan resumes where
/// the last one stopped, so an event of n bytes costs O(n) in any number of chunks.
#[derive(Default)]
pub(crate) struct SseSplitter {
    buffer: BytesMut,
    /// The next byte to examine.
    pos: usize,
    /// Where the line being scanned starts.
    line_start: usize,
}

impl SseSplitter {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event (with its terminating blank line), if any.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let end = self.find_event_end()?;
        self.pos = 0;
        self.line_start = 0;
        Some(self.buffer.split_to(end).freeze())
    }

    /// How many bytes of an unfinished event are held.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// Whatever is left when the stream ends (an unterminated event).
    pub fn rest(&mut self) -> Option<Bytes> {
        self.pos = 0;
        self.line_start = 0;
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }

    /// The offset just past the blank line that ends the first event. A line ends at
    /// CRLF, LF or CR; a CR at the very end of the buffer waits for the next byte.
    fn find_event_end(&mut self) -> Option<usize> {
        let bytes = &self.buffer[..];
        while self.pos < bytes.len() {
            let i = self.pos;
            let end_of_line = match bytes[i] {
                b'\n' => i + 1,
                b'\r' if i + 1 < bytes.len() => {
                    if bytes[i + 1] == b'\n' {
                        i + 2
                    } else {
                        i + 1
                    }
                }
                // A CR at the end of the buffer may be the first half of a CRLF. If it
                // ends a blank line the event is complete either way (a following LF
                // is then an empty line of its own); otherwise wait for the next byte,
                // and look at this CR again then.
                b'\r' if i == self.line_start => return Some(i + 1),
                b'\r' => return None,
                _ => {
                    // The rest of the line in one step: no line ending in it.
                    self.pos = bytes[i..]
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .map_or(bytes.len(), |n| i + n);
                    continue;
                }
            };
            if i == self.line_start {
                return Some(end_of_line);
            }
            self.pos = end_of_line;
            self.line_start = end_of_line;
        }
        None
    }
}

/// The data of an SSE event (its `data` lines joined), if it has any.
pub(crate) fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    event_fields(text.strip_prefix('\u{feff}').unwrap_or(&text)).0
}

/// An event's data (`None` without `data` lines) and its other lines.
pub(crate) fn event_fields(text: &str) -> (Option<String>, Vec<&str>) {
    let mut data: Option<String> = None;
    let mut other_lines = Vec::new();
    for line in text
        .split_inclusive(['\n', '\r'])
        .map(|l| l.trim_end_matches(['\n', '\r']))
    {
        if line.is_empty() {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        } else {
            other_lines.push(line);
        }
    }
    (data, other_lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<String> {
        let mut s = SseSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk.as_bytes());
            while let Some(e) = s.next_event() {
                out.push(String::from_utf8(e.to_vec()).unwrap());
            }
        }
        if let Some(rest) = s.rest() {
            out.push(format!(
                "REST:{}",
                String::from_utf8(rest.to_vec()).unwrap()
            ));
        }
        out
    }

    #[test]
    fn splits_on_blank_lines_with_any_line_ending() {
        assert_eq!(
            events(&["data: a\n\ndata: b\n\n"]),
            ["data: a\n\n", "data: b\n\n"]
        );
        assert_eq!(
            events(&["data: a\r\n\r\nid: 2\r\ndata: b\r\n\r\n"]),
            ["data: a\r\n\r\n", "id: 2\r\ndata: b\r\n\r\n"]
        );
        assert_eq!(
            events(&["data: a\r\rdata: b\r\r"]),
            ["data: a\r\r", "data: b\r\r"]
        );
        assert_eq!(events(&["\n", "data: a\n\n"]), ["\n", "data: a\n\n"]);
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        assert_eq!(
            events(&["da", "ta: a\n", "\n", "data: b\r", "\n\r", "\n"]),
            ["data: a\n\n", "data: b\r\n\r", "\n"]
        );
        assert_eq!(events(&["data: a\r", "\r"]), ["data: a\r\r"]);
        // A CR that ends a non-empty line waits: the next byte may make it a CRLF.
        assert_eq!(
            events(&["data: a\r", "\ndata: b\n\n"]),
            ["data: a\r\ndata: b\n\n"]
        );
        assert_eq!(events(&["data: a\r\r", "\n"]), ["data: a\r\r", "\n"]);
        assert_eq!(events(&["data: a\n", "id: 1"]), ["REST:data: a\nid: 1"]);
        assert_eq!(events(&[": keep-alive\n\n"]), [": keep-alive\n\n"]);
    }

    #[test]
    fn a_large_event_in_tiny_chunks_is_split_in_linear_time() {
        // 4 MiB in one-byte and 1 KiB chunks: every byte is examined a bounded number of
        // times (the old splitter rescanned the line per chunk: O(k·n), minutes here).
        let payload = "x".repeat(4 << 20);
        let event = format!("data: {payload}\r\n\r\n");
        for chunk in [1, 1024] {
            let mut s = SseSplitter::default();
            let mut out = Vec::new();
            for piece in event.as_bytes().chunks(chunk) {
                s.push(piece);
                while let Some(e) = s.next_event() {
                    out.push(e);
                }
            }
            // With CRLF endings cut after the last CR, the final LF is an empty line of
            // its own (a CR ending a blank line ends the event at once); no byte is lost.
            assert!(out[0].starts_with(b"data: xxx"), "chunk size {chunk}");
            assert!(out[0].len() >= event.len() - 1, "chunk size {chunk}");
            assert_eq!(out.concat(), event.as_bytes(), "chunk size {chunk}");
            assert!(s.rest().is_none());
        }
    }
}
