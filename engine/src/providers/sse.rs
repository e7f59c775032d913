//! A lean, incremental Server-Sent Events parser for provider streams.
//!
//! Bytes go in as they arrive from the socket ([`SseParser::feed`]); complete events come out
//! ([`SseParser::next_event`]) as borrowed `(event, data)` pairs, so the per-token hot path
//! allocates nothing here once the buffers have grown to the size of one event.
//!
//! Why not `eventsource-stream`: it allocates a fresh `String` for every event's type, data
//! and id (plus a clone of the last id), and wraps the stream so the caller cannot see where
//! an event ends relative to the bytes received. This parser is a few dozen lines, follows the
//! WHATWG rules that matter for LLM providers, and the benchmark in
//! `engine/benches/sse_parsing.rs` compares the two.
//!
//! What it handles, per the SSE spec: `\n`, `\r\n` and lone `\r` line endings (including a
//! `\r\n` split across two reads), events and lines split across reads, multi-byte UTF-8
//! split across reads (lines are only decoded once complete), `:` comment lines (keep-alives),
//! several `data:` lines joined with `\n`, an optional single space after the colon, a
//! leading byte-order mark, and `id:`/`retry:` fields (ignored: providers' streams are not
//! resumable). An event is dispatched at a blank line, and only if it carried `data`.

use std::fmt;

/// The longest line or event we accept. Provider events are a few hundred bytes; a peer that
/// sends megabytes without a newline is broken or hostile, and must not grow memory forever.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event, borrowed from the parser until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, or `""` when the event had none (the spec's default `message`).
    pub event: &'a str,
    /// The `data:` lines joined with `\n`.
    pub data: &'a str,
}

/// Why a byte stream is not a valid event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line is not UTF-8.
    InvalidUtf8,
    /// A line or event exceeded the size limit.
    TooLong,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SseError::InvalidUtf8 => "event stream line is not valid UTF-8",
            SseError::TooLong => "event stream line or event is too long",
        })
    }
}

impl std::error::Error for SseError {}

/// Incremental SSE parser; see the module docs.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes received and not yet consumed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// The previous line ended with `\r`: a `\n` right after it belongs to that ending.
    skip_lf: bool,
    bom_checked: bool,
    event: String,
    data: String,
    has_data: bool,
    /// The last returned event borrowed `event`/`data`; clear them on the next call.
    dispatched: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            // Consumed bytes are dropped lazily, here, so a read that carries many events is
            // parsed without moving memory between them.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a dispatched event's final line.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<SseEvent<'_>>, SseError> {
        if self.dispatched {
            self.dispatched = false;
            self.event.clear();
            self.data.clear();
            self.has_data = false;
        }
        if !self.bom_checked {
            let rest = &self.buf[self.pos..];
            if rest.len() < BOM.len() && BOM.starts_with(rest) {
                return Ok(None);
            }
            if rest.starts_with(BOM) {
                self.pos += BOM.len();
            }
            self.bom_checked = true;
        }
        loop {
            let rest = &self.buf[self.pos..];
            if self.skip_lf {
                match rest.first() {
                    None => return Ok(None),
                    Some(b'\n') => self.pos += 1,
                    Some(_) => {}
                }
                self.skip_lf = false;
                continue;
            }
            let Some(end) = find_eol(rest) else {
                if rest.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLong);
                }
                return Ok(None);
            };
            let line = &rest[..end];
            self.skip_lf = rest[end] == b'\r';
            self.pos += end + 1;

            if line.is_empty() {
                if self.has_data {
                    self.dispatched = true;
                    return Ok(Some(SseEvent { event: &self.event, data: &self.data }));
                }
                // A blank line after an event without data (or after comments) resets the
                // event type and dispatches nothing.
                self.event.clear();
                continue;
            }
            if line[0] == b':' {
                continue; // comment / keep-alive
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    let value = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
                    if self.data.len() + value.len() > MAX_EVENT_BYTES {
                        return Err(SseError::TooLong);
                    }
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                b"event" => {
                    let value = std::str::from_utf8(value).map_err(|_| SseError::InvalidUtf8)?;
                    self.event.clear();
                    self.event.push_str(value);
                }
                _ => {} // id, retry and unknown fields
            }
        }
    }
}

/// Index of the first `\n` or `\r` in `hay`. Provider lines are mostly long JSON, and a
/// bytewise scan was the parser's largest cost, so this looks at eight bytes at a time
/// (SWAR: a byte equal to the target becomes zero after XOR, and the zero-byte test marks
/// it; the lowest mark is always exact, so its position is the answer).
fn find_eol(hay: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = ONES * b'\n' as u64;
    const CR: u64 = ONES * b'\r' as u64;
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let marks = zero_bytes(word ^ LF) | zero_bytes(word ^ CR);
        if marks != 0 {
            return Some(offset + (marks.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'\n' || b == b'\r').map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn find_eol_matches_a_bytewise_scan() {
        let naive = |h: &[u8]| h.iter().position(|&b| b == b'\n' || b == b'\r');
        let mut rng = SmallRng::seed_from_u64(1);
        // Bytes near the targets (and 0x80+ for the borrow edge cases) are likelier.
        let alphabet = [b'\n', b'\r', 0x09, 0x0B, 0x0C, 0x0E, 0x00, 0x01, 0x80, 0x8A, 0xFF, b'a'];
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let hay: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.9) {
                        alphabet[rng.random_range(2..alphabet.len())]
                    } else {
                        alphabet[rng.random_range(0..2)]
                    }
                })
                .collect();
            assert_eq!(find_eol(&hay), naive(&hay), "{hay:?}");
        }
    }

    fn collect(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk);
            while let Some(ev) = parser.next_event().unwrap() {
                out.push((ev.event.to_owned(), ev.data.to_owned()));
            }
        }
        out
    }

    fn every_split(input: &[u8]) -> Vec<Vec<(String, String)>> {
        (0..=input.len()).map(|i| collect(&[&input[..i], &input[i..]])).collect()
    }

    #[test]
    fn parses_fields_comments_and_line_endings() {
        let input = "\u{FEFF}: keep-alive\r\nevent: ping\r\ndata: {\"a\":1}\r\n\r\n\
                     data:first\ndata: second\n\n\
                     event: only-type\n\n\
                     id: 7\rretry: 10\rdata: cr\r\r";
        let expected = vec![
            ("ping".to_owned(), "{\"a\":1}".to_owned()),
            (String::new(), "first\nsecond".to_owned()),
            (String::new(), "cr".to_owned()),
        ];
        for (i, got) in every_split(input.as_bytes()).into_iter().enumerate() {
            assert_eq!(got, expected, "split at byte {i}");
        }
        // One byte at a time, too.
        let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
        assert_eq!(collect(&bytes), expected);
    }

    #[test]
    fn multibyte_utf8_split_across_reads() {
        let input = "data: héllo — 世界 🦀\n\n";
        for got in every_split(input.as_bytes()) {
            assert_eq!(got, vec![(String::new(), "héllo — 世界 🦀".to_owned())]);
        }
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        assert!(collect(&[b"data: x\n"]).is_empty());
        assert!(collect(&[b"data: x"]).is_empty());
    }

    #[test]
    fn rejects_invalid_utf8_and_unbounded_lines() {
        let mut parser = SseParser::new();
        parser.feed(b"data: \xFF\xFE\n\n");
        assert_eq!(parser.next_event(), Err(SseError::InvalidUtf8));

        let mut parser = SseParser::new();
        parser.feed(&vec![b'a'; MAX_EVENT_BYTES + 1]);
        assert_eq!(parser.next_event(), Err(SseError::TooLong));
    }

    #[test]
    fn consumed_bytes_are_released() {
        let mut parser = SseParser::new();
        for _ in 0..1000 {
            parser.feed(b"data: 0123456789\n\n");
            while parser.next_event().unwrap().is_some() {}
        }
        assert_eq!(parser.buffered(), 0);
        assert!(parser.buf.len() < 64);
    }
}
