//! A gRPC connection's socket that gathers the frames HTTP/2 writes while it answers a batch of checks and sends them in one write; never reads or changes a byte.
//!
//! The HTTP/2 layer (h2) copies small frames into its own buffer, but hands over a DATA frame
//! of more than 256 bytes apart and flushes the socket before it takes the next frame. An
//! answer that passes the token's payload to the service (`outputPayloadToHeader`) is over a
//! kilobyte, so without this each answer cost a `writev` and a TCP segment of its own, where
//! 64 answers ready at once could share a few.
//!
//! The rule: a flush asked for right after new bytes came is put off, and the connection's
//! task is woken, so that it runs again after the tasks already queued, which may answer more
//! checks; a flush asked for with nothing new since the last one writes everything. Within one
//! poll of the connection, h2 writes each frame and flushes, and ends with a flush of nothing
//! new: the whole batch then leaves in one write. Past [`MAX_GATHERED_BYTES`] the bytes are
//! written at once, so a connection with much to send streams it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes gathered at most before they are written without waiting for a flush.
pub const MAX_GATHERED_BYTES: usize = 64 * 1024;

/// A TCP stream whose writes are gathered until a flush with nothing new.
#[derive(Debug)]
pub struct CoalescingStream {
    inner: TcpStream,
    gathered: Vec<u8>,
    /// How much of `gathered` the socket already took.
    sent: usize,
    /// Bytes came since the last flush.
    fresh: bool,
}

impl CoalescingStream {
    /// Gathers the writes to `inner`.
    pub fn new(inner: TcpStream) -> Self {
        Self { inner, gathered: Vec::new(), sent: 0, fresh: false }
    }

    /// Writes what is gathered; `Ready` once the socket took all of it.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.gathered.get(self.sent..).filter(|rest| !rest.is_empty()) {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, rest))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                written => self.sent += written,
            }
        }
        self.gathered.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs` whole into the gathered bytes, writing those first when they would pass
    /// the bound.
    fn poll_gather(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let length: usize = bufs.iter().map(|buf| buf.len()).sum();
        if self.gathered.len() + length > MAX_GATHERED_BYTES {
            ready!(self.poll_send_gathered(cx))?;
        }
        for buf in bufs {
            self.gathered.extend_from_slice(buf);
        }
        self.fresh |= length > 0;
        Poll::Ready(Ok(length))
    }
}

impl AsyncRead for CoalescingStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_gather(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if std::mem::take(&mut self.fresh) {
            // Put off: the task runs again, and that flush finds nothing new.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for CoalescingStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair: the gathering end and the plain peer.
    async fn pair() -> (CoalescingStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (CoalescingStream::new(server), client)
    }

    /// Whether the peer has bytes to read now.
    async fn readable_now(peer: &mut TcpStream) -> usize {
        tokio::task::yield_now().await;
        let mut buffer = [0_u8; 4096];
        match peer.try_read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(error) => panic!("{error}"),
        }
    }

    #[tokio::test]
    async fn frames_flushed_one_by_one_leave_together_at_the_flush_with_nothing_new() {
        let (mut gathering, mut peer) = pair().await;
        for frame in [&b"one "[..], b"two ", b"three"] {
            gathering.write_all(frame).await.unwrap();
            gathering.flush().await.unwrap();
        }
        assert_eq!(readable_now(&mut peer).await, 0, "each flush after new bytes is put off");
        gathering.flush().await.unwrap();
        let mut read = vec![0_u8; 13];
        peer.read_exact(&mut read).await.unwrap();
        assert_eq!(read, b"one two three");
    }

    /// A waker that counts its wakes.
    struct CountedWakes(AtomicUsize);

    impl Wake for CountedWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_put_off_flush_wakes_its_task_and_the_next_flush_writes_without_waking() {
        let (mut gathering, mut peer) = pair().await;
        let wakes = Arc::new(CountedWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        gathering.write_all(b"answer").await.unwrap();
        assert!(Pin::new(&mut gathering).poll_flush(&mut cx).is_ready());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "put off, the task is woken to flush again");
        assert_eq!(readable_now(&mut peer).await, 0);
        assert!(Pin::new(&mut gathering).poll_flush(&mut cx).is_ready());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "a flush that writes wakes nobody");
        let mut read = vec![0_u8; 6];
        peer.read_exact(&mut read).await.unwrap();
        assert_eq!(read, b"answer");
    }

    #[tokio::test]
    async fn bytes_past_the_bound_are_written_without_a_flush() {
        let (mut gathering, mut peer) = pair().await;
        let chunk = vec![7_u8; MAX_GATHERED_BYTES / 2 + 1];
        gathering.write_all(&chunk).await.unwrap();
        assert_eq!(readable_now(&mut peer).await, 0);
        gathering.write_all(&chunk).await.unwrap();
        let mut read = vec![0_u8; chunk.len()];
        peer.read_exact(&mut read).await.unwrap();
        assert_eq!(read, chunk, "the first chunk left when the second would pass the bound");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_gathered() {
        let (mut gathering, mut peer) = pair().await;
        gathering.write_all(b"last words").await.unwrap();
        gathering.shutdown().await.unwrap();
        let mut read = Vec::new();
        peer.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"last words");
    }
}
