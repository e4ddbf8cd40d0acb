//! Binary frames (4-byte big-endian length + bincode 2): any bytes give "need more", an
//! error, or a message that survives a round trip. Never a panic, never an allocation beyond
//! the 16 MiB frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sticler_proto::codec::{self, MAX_FRAME_LEN};
use sticler_proto::{ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    match codec::decode_frame::<ClientMessage>(data) {
        Ok(Some((msg, used))) => {
            assert!(used > 4 && used <= data.len() && used <= MAX_FRAME_LEN + 4);
            let frame = codec::encode_frame(&msg).expect("a decoded message encodes");
            let (back, len) = codec::decode_frame::<ClientMessage>(&frame).expect("re-decodes").expect("complete");
            assert_eq!(back, msg);
            assert_eq!(len, frame.len());
        }
        Ok(None) => {
            // Only a prefix that announces more than what arrived may wait for more bytes.
            if let Some(prefix) = data.get(..4) {
                let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
                assert!(len > 0 && len <= MAX_FRAME_LEN && data.len() < 4 + len);
            }
        }
        Err(_) => {}
    }
    // The blocking reader used by clients agrees with the buffer decoder.
    let streamed = codec::read_frame::<_, ClientMessage>(&mut &data[..]);
    if let Ok(Some((msg, _))) = codec::decode_frame::<ClientMessage>(data) {
        assert_eq!(streamed.expect("read_frame accepts what decode_frame accepts"), msg);
    }
    // What a client decodes from the daemon.
    let _ = codec::decode_frame::<ServerMessage>(data);
});
