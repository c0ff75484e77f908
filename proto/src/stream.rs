//! Framing for `zennet-pay`: borsh values behind a 4-byte big-endian
//! length; a frame above [`MAX_FRAME`] is refused before it is read. The
//! transport is any byte stream (an SSH channel in production, an
//! in-memory duplex in tests).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::Frame;

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the peer closed the zennet-pay stream")]
    Closed,
    #[error("zennet-pay frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed zennet-pay frame: {0}")]
    Malformed(std::io::Error),
    #[error("zennet-pay i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let body = borsh::to_vec(frame).map_err(WireError::Malformed)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    borsh::from_slice(&body).map_err(WireError::Malformed)
}

/// A `zennet-pay` stream whose receiving side is cancel-safe: a reader
/// task owns the read half, so `recv` can sit in a `select!` next to
/// timers without losing half a frame.
pub struct PayStream {
    frames: tokio::sync::mpsc::Receiver<Result<Frame, WireError>>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
}

impl PayStream {
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> PayStream {
        let (mut reader, writer) = tokio::io::split(stream);
        let (tx, frames) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut reader).await;
                let stop = frame.is_err();
                if tx.send(frame).await.is_err() || stop {
                    return;
                }
            }
        });
        PayStream {
            frames,
            writer: Box::new(writer),
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        write_frame(&mut self.writer, frame).await
    }

    /// The next frame; cancel-safe.
    pub async fn recv(&mut self) -> Result<Frame, WireError> {
        self.frames.recv().await.unwrap_or(Err(WireError::Closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PROTOCOL_VERSION;
    use crate::{Usage, UsageReport};
    use zennet_chain::Hash;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let frames = vec![
            Frame::Join {
                version: PROTOCOL_VERSION,
                task: Hash([7; 32]),
            },
            Frame::Usage(UsageReport {
                seq: 3,
                usage: Usage {
                    cpu_ms: 5,
                    ..Default::default()
                },
                accrued: 99,
                last: false,
            }),
            Frame::Bye {
                reason: "done".into(),
            },
        ];
        for f in &frames {
            write_frame(&mut a, f).await.unwrap();
        }
        for f in &frames {
            assert_eq!(&read_frame(&mut b).await.unwrap(), f);
        }
        // An oversized length is refused without reading the body.
        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::TooLarge(_))
        ));
        // Garbage that does not decode.
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(WireError::Malformed(_))
        ));
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(WireError::Closed)));
    }
}
