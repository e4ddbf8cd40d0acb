//! JSON-lines messages: any line gives an error or a message that survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sticler_proto::codec;
use sticler_proto::{ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    // The daemon hands the decoder one line, newline included.
    let line = match data.iter().position(|b| *b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    if let Ok(msg) = codec::decode_json_line::<ClientMessage>(line) {
        let encoded = codec::encode_json_line(&msg).expect("a decoded message encodes");
        assert_eq!(encoded.iter().filter(|b| **b == b'\n').count(), 1, "one message is one line");
        assert_eq!(codec::decode_json_line::<ClientMessage>(&encoded).expect("re-decodes"), msg);
    }
    let _ = codec::decode_json_line::<ServerMessage>(line);
});
