//! A second, lenient reading of a control-stream frame that did not decode. A request whose text
//! fields (the username of a claim or lookup, the push URL) hold bytes that are not UTF-8 is
//! otherwise well-formed: it is refused on its own (`MALFORMED` under its request id) and the
//! connection stays, where a frame that does not decode at all closes it.

use prost::Message;

/// `ClientFrame` (`relay_api.proto`) as far as its text-carrying requests go, with their text
/// read as bytes; every other field is skipped.
#[derive(Clone, PartialEq, Message)]
struct TextFrame {
    #[prost(uint64, tag = "1")]
    request_id: u64,
    /// `RegisterPush { string url = 1 }`.
    #[prost(message, optional, tag = "12")]
    register_push: Option<Text>,
    /// `ClaimUsername { string name = 1; bytes proof = 2 }`.
    #[prost(message, optional, tag = "14")]
    claim_username: Option<Text>,
    /// `LookupUsername { string name = 1 }`.
    #[prost(message, optional, tag = "16")]
    lookup_username: Option<Text>,
}

/// A request's text field (tag 1 in each of them), as bytes.
#[derive(Clone, PartialEq, Message)]
struct Text {
    #[prost(bytes = "vec", tag = "1")]
    text: Vec<u8>,
}

/// The request id of `body` if it is a well-formed frame apart from a text field that is not
/// UTF-8; `None` otherwise (then it is a bad frame).
pub(super) fn text_not_utf8(body: &[u8]) -> Option<u64> {
    let f = TextFrame::decode(body).ok()?;
    [&f.register_push, &f.claim_username, &f.lookup_username]
        .into_iter()
        .flatten()
        .any(|t| std::str::from_utf8(&t.text).is_err())
        .then_some(f.request_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_proto::relay_api::{self as api, ClientFrame, client_frame};

    #[test]
    fn only_a_text_that_is_not_utf8_makes_a_refusable_request() {
        let good = ClientFrame {
            request_id: 7,
            kind: Some(client_frame::Kind::LookupUsername(api::LookupUsername {
                name: "alice".into(),
            })),
        }
        .encode_to_vec();
        assert_eq!(text_not_utf8(&good), None);
        // The same frame with the name's bytes replaced by invalid UTF-8 (same length).
        let mut bad = good.clone();
        let at = bad.windows(5).position(|w| w == b"alice").unwrap();
        bad[at..at + 5].copy_from_slice(&[0xff, 0xfe, b'a', b'b', b'c']);
        assert!(ClientFrame::decode(bad.as_slice()).is_err());
        assert_eq!(text_not_utf8(&bad), Some(7));
        // Garbage stays garbage.
        assert_eq!(text_not_utf8(&[0xff, 0xff, 0xff]), None);
    }
}
