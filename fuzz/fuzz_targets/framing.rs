//! The HTTP/1 framing watcher (`smartgate::framing`), fed raw connection bytes: the first
//! byte says how many bytes arrive per read. Oracles: no panic; the verdicts do not depend
//! on how the stream was split; a refusal is the last verdict (the connection closes after
//! it); there is at most one verdict per `HTTP/1.` in the stream (one per request head).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartgate::framing::scan;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let whole = scan(stream, stream.len());
    assert_eq!(
        scan(stream, usize::from(piece)),
        whole,
        "split every {piece} bytes"
    );
    if let Some(i) = whole.iter().position(Result::is_err) {
        assert_eq!(i + 1, whole.len(), "verdicts after a refusal: {whole:?}");
    }
    let heads = stream.windows(7).filter(|w| w == b"HTTP/1.").count();
    assert!(
        whole.len() <= heads,
        "{} verdicts for {heads} request lines",
        whole.len()
    );
});
