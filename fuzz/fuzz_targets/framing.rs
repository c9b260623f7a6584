//! The HTTP/1 framing watcher (`smartgate::framing`), fed raw connection bytes: the first
//! byte says how many bytes arrive per read. Oracles: no panic; neither the verdicts nor
//! the bytes handed to hyper depend on how the stream was split; a refusal is the last
//! verdict (the connection closes after it); there is at most one verdict per `HTTP/1.` in
//! the stream (one per request head); without a refusal hyper gets a prefix of the stream
//! (held back: at most an incomplete last head), and with one it gets no more bytes than
//! the stream has.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartgate::framing::scan;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let (whole, passed) = scan(stream, stream.len());
    assert_eq!(
        scan(stream, usize::from(piece)),
        (whole.clone(), passed.clone()),
        "split every {piece} bytes"
    );
    match whole.iter().position(Result::is_err) {
        Some(i) => {
            assert_eq!(i + 1, whole.len(), "verdicts after a refusal: {whole:?}");
            assert!(passed.len() <= stream.len(), "a refusal added bytes");
        }
        None => assert!(stream.starts_with(&passed), "hyper got bytes the client never sent"),
    }
    let heads = stream.windows(7).filter(|w| w == b"HTTP/1.").count();
    assert!(
        whole.len() <= heads,
        "{} verdicts for {heads} request lines",
        whole.len()
    );
});
