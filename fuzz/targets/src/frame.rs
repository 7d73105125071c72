//! The frame codec of `hush-net` as the relay and the client read it: frames one after another
//! from one stream until the first error, with the byte stream arriving in pieces of a size the
//! input chooses.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use hush_net::frame::{self, FRAME_HEADER, FrameError};
use hush_proto::relay_api::{BlobRequest, BlobResponse, ClientFrame, ServerFrame};
use hush_proto::{Message, client::Sealed};
use tokio::io::{AsyncRead, ReadBuf};

use crate::proto::roundtrip;

/// A stream that hands out at most `piece` bytes per read.
struct Pieces<'a> {
    rest: &'a [u8],
    piece: usize,
    /// Bytes handed out so far.
    taken: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.rest.len().min(self.piece).min(buf.remaining());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        self.taken += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (every read above is ready at once).
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read from memory waited"),
    }
}

/// Reads frames of type `M` until the first error, checking each against its encoding.
fn read_all<M: Message + Default + PartialEq + std::fmt::Debug>(
    data: &[u8],
    piece: usize,
    cap: usize,
) {
    let mut r = Pieces {
        rest: data,
        piece,
        taken: 0,
    };
    // At most one frame per header, so this ends; bound it anyway.
    for _ in 0..=data.len() / FRAME_HEADER {
        let start = r.taken;
        match ready(frame::read_raw(&mut r, cap)) {
            Ok(raw) => {
                assert!(raw.len() <= cap, "frame over the cap");
                assert_eq!(r.taken - start, FRAME_HEADER + raw.len(), "frame length");
                if let Some(m) = roundtrip::<M>(&raw) {
                    let bytes = frame::encode(&m);
                    let back: M = ready(frame::read(&mut bytes.as_slice(), usize::MAX))
                        .expect("an encoded frame reads back");
                    assert!(back == m);
                }
            }
            Err(FrameError::Finished) => {
                assert_eq!(start, data.len(), "finished inside the data");
                return;
            }
            Err(FrameError::TooLarge { len, cap: c }) => {
                assert!(len > c && c == cap);
                return;
            }
            Err(FrameError::Truncated) => {
                assert_eq!(r.taken, data.len(), "truncated before the end of the data");
                return;
            }
            Err(e) => panic!("reading from memory failed: {e}"),
        }
    }
    panic!("more frames than headers");
}

/// The target: byte 0 picks the frame type and the cap, byte 1 the read size; the rest is the
/// stream.
pub fn frames(data: &[u8]) {
    let [sel, piece, stream @ ..] = data else {
        return;
    };
    let piece = usize::from(*piece % 16) + 1;
    // The relay's default cap, a small one (so TooLarge is reached), and the blob-stream cap.
    let cap = match (sel >> 4) % 3 {
        0 => 1 << 20,
        1 => 64,
        _ => 1024,
    };
    match sel % 5 {
        0 => read_all::<ClientFrame>(stream, piece, cap),
        1 => read_all::<ServerFrame>(stream, piece, cap),
        2 => read_all::<BlobRequest>(stream, piece, cap),
        3 => read_all::<BlobResponse>(stream, piece, cap),
        _ => read_all::<Sealed>(stream, piece, cap),
    }
}
