//! Length-prefixed protobuf frames on a byte stream: u32 big-endian length, then the message.
//! Separate from the transport so it can be tested (and fuzzed) on any `AsyncRead`.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the big-endian length that precedes every frame.
pub const FRAME_HEADER: usize = 4;

/// Most bytes a frame's buffer grows by per read.
const READ_CHUNK: usize = 16 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before a new frame started.
    #[error("stream finished")]
    Finished,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The frame's length is over the cap.
    #[error("frame of {len} bytes is over the cap of {cap}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The frame's bytes are not the expected protobuf message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame's bytes (at most `cap`).
pub async fn read_raw<R: AsyncRead + Unpin>(r: &mut R, cap: usize) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        let rest = len.get_mut(got..).ok_or(FrameError::Truncated)?;
        let n = r.read(rest).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Finished
            } else {
                FrameError::Truncated
            });
        }
        got += n;
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > cap {
        return Err(FrameError::TooLarge { len, cap });
    }
    // The buffer grows with the bytes that arrived, never ahead of them by more than one
    // chunk: a peer that declares a large frame and sends little of it holds little memory.
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    while buf.len() < len {
        let start = buf.len();
        let want = (len - start).min(READ_CHUNK);
        buf.resize(start + want, 0);
        let rest = buf.get_mut(start..).ok_or(FrameError::Truncated)?;
        let n = r.read(rest).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(buf)
}

/// Reads and decodes one frame.
pub async fn read<M: Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
    cap: usize,
) -> Result<M, FrameError> {
    let raw = read_raw(r, cap).await?;
    Ok(M::decode(raw.as_slice())?)
}

/// Encodes a message as one frame (length prefix included).
pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    let len = m.encoded_len();
    let mut out = Vec::with_capacity(FRAME_HEADER + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    m.encode_raw(&mut out);
    out
}

/// Writes one frame.
pub async fn write<M: Message, W: AsyncWrite + Unpin>(w: &mut W, m: &M) -> std::io::Result<()> {
    w.write_all(&encode(m)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_proto::relay_api::{ClientFrame, Ping, client_frame};

    #[tokio::test]
    async fn round_trip_and_errors() {
        let m = ClientFrame {
            request_id: 7,
            kind: Some(client_frame::Kind::Ping(Ping {})),
        };
        let bytes = encode(&m);
        let got: ClientFrame = read(&mut bytes.as_slice(), 1024).await.unwrap();
        assert_eq!(got, m);
        // Over the cap.
        assert!(matches!(
            read::<ClientFrame, _>(&mut bytes.as_slice(), 2).await,
            Err(FrameError::TooLarge { .. })
        ));
        // Truncated in the header and in the body; clean end.
        assert!(matches!(
            read::<ClientFrame, _>(&mut &bytes[..2], 1024).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read::<ClientFrame, _>(&mut &bytes[..bytes.len() - 1], 1024).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read::<ClientFrame, _>(&mut &b""[..], 1024).await,
            Err(FrameError::Finished)
        ));
        // A frame that arrives a byte at a time reads whole.
        let mut slow = tokio_test_reader(&bytes);
        let got: ClientFrame = read(&mut slow, 1024).await.unwrap();
        assert_eq!(got, m);
        // Not protobuf.
        let junk = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            read::<ClientFrame, _>(&mut &junk[..], 1024).await,
            Err(FrameError::Malformed(_))
        ));
    }

    /// A reader that hands out one byte per read.
    fn tokio_test_reader(bytes: &[u8]) -> impl AsyncRead + Unpin + '_ {
        struct OneByte<'a>(&'a [u8]);
        impl AsyncRead for OneByte<'_> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some((first, rest)) = self.0.split_first() {
                    buf.put_slice(&[*first]);
                    self.0 = rest;
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        OneByte(bytes)
    }

    #[tokio::test]
    async fn a_declared_length_is_not_allocated_before_its_bytes_arrive() {
        // A header declaring 256 MiB, then 10 bytes and the end of the stream. The reader
        // records the largest buffer it was handed: the frame's buffer grows in chunks as bytes
        // arrive instead of being allocated at the declared length up front.
        struct Watch<'a> {
            data: &'a [u8],
            largest: usize,
        }
        impl AsyncRead for Watch<'_> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.largest = self.largest.max(buf.remaining());
                let n = self.data.len().min(buf.remaining());
                let (now, later) = self.data.split_at(n);
                buf.put_slice(now);
                self.data = later;
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut data = (256u32 << 20).to_be_bytes().to_vec();
        data.extend_from_slice(&[0u8; 10]);
        let mut r = Watch {
            data: &data,
            largest: 0,
        };
        assert!(matches!(
            read_raw(&mut r, usize::MAX).await,
            Err(FrameError::Truncated)
        ));
        assert!(r.largest <= READ_CHUNK, "{}", r.largest);
    }
}
