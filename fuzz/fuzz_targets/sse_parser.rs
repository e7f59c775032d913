//! The incremental SSE parser (`engine::providers::sse`) on arbitrary bytes.
//!
//! Input: one seed byte that decides how the stream is split into reads (see
//! `switchyard_fuzz::chunks`), then the stream. The events (and the first error) must be the
//! same however the bytes arrive — a parser that only works when a read ends at a line end
//! loses or mangles tokens in production — and what comes out must respect the format: an
//! event type is one line, data lines are joined with `\n` and never carry a `\r`.

#![no_main]

use engine::providers::sse::{SseError, SseParser};
use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::chunks;

/// Every event, then the error that stopped the parse (if any).
type Parsed = (Vec<(String, String)>, Option<SseError>);

fn parse<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Parsed {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut fed = 0;
    for read in reads {
        parser.feed(read);
        fed += read.len();
        loop {
            match parser.next_event() {
                Ok(Some(event)) => {
                    assert!(!event.event.contains(['\n', '\r']), "event type spans lines");
                    assert!(!event.data.contains('\r'), "a data line kept its \\r");
                    events.push((event.event.to_owned(), event.data.to_owned()));
                }
                Ok(None) => break,
                Err(error) => return (events, Some(error)),
            }
            assert!(parser.buffered() <= fed);
        }
        assert!(parser.buffered() <= fed);
    }
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = parse([stream]);
    let split = parse(chunks(seed, stream));
    assert_eq!(split, whole, "the split stream parsed differently");
});
