//! A vectored write buffer made of `Bytes` slices, so the relay can send a chunk header, payload
//! slices of the upstream read buffer and a trailer in one `writev` without copying payload, and
//! [`write_all`], the loop that sends all of it across partial writes.
//!
//! monoio 0.2.4's own `write_vectored_all` must not be used: after a partial `writev` its
//! `IoVecMeta::consume` shortens the current iovec without advancing its pointer, so the next
//! call re-sends bytes already written (a corrupted body under a slow reader) or fails with
//! EFAULT. Here the slices themselves are advanced, so every call describes exactly the bytes
//! still to send. Hot path.

use std::io;

use bytes::{Buf, Bytes};
use monoio::buf::IoVecBuf;
use monoio::io::AsyncWriteRent;

/// An owned list of byte slices and the iovec array that points into them. Slices before
/// `start` have been written and are skipped.
#[derive(Default)]
pub struct BytesVec {
    parts: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
    start: usize,
}

impl BytesVec {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            parts: Vec::with_capacity(n),
            iovecs: Vec::with_capacity(n),
            start: 0,
        }
    }

    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.iovecs.push(libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
        self.parts.push(b);
    }

    /// Empties the list, keeping its capacity for the next write.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.iovecs.clear();
        self.start = 0;
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.parts[self.start..].iter().map(Bytes::len).sum()
    }

    /// Marks the first `n` unwritten bytes as written (after a `writev` returned `n`).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.parts.len() {
            let part = &mut self.parts[self.start];
            if n >= part.len() {
                n -= part.len();
                self.start += 1;
            } else {
                part.advance(n);
                self.iovecs[self.start] = libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                };
                n = 0;
            }
        }
    }
}

// SAFETY: every iovec from `start` on points into the `Bytes` at the same index of `parts`
// (rebuilt whenever that slice is advanced); `Bytes` never moves its heap data, and neither
// vector is modified while the runtime owns the value (it is passed by value to the write and
// only handed back when the operation has completed).
unsafe impl IoVecBuf for BytesVec {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs[self.start..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len() - self.start
    }
}

/// Writes every byte of `buf`, calling `writev` again after each partial write. Returns the
/// buffer so its capacity can be reused.
pub async fn write_all<W: AsyncWriteRent>(
    w: &mut W,
    mut buf: BytesVec,
) -> (io::Result<()>, BytesVec) {
    while buf.start < buf.parts.len() {
        let (res, back) = w.writev(buf).await;
        buf = back;
        match res {
            Ok(0) => {
                return (
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer accepts no more bytes",
                    )),
                    buf,
                )
            }
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwritten(v: &BytesVec) -> Vec<u8> {
        (v.start..v.parts.len())
            .flat_map(|i| {
                let iov = v.iovecs[i];
                // SAFETY: the iovec points into `v.parts[i]`, which is alive for this borrow.
                unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) }
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn advance_moves_pointers_not_just_lengths() {
        let mut v = BytesVec::with_capacity(3);
        v.push(Bytes::from_static(b"head:"));
        v.push(Bytes::from_static(b"0123456789"));
        v.push(Bytes::from_static(b"!"));
        v.advance(3);
        assert_eq!(unwritten(&v), b"d:0123456789!");
        v.advance(2 + 4);
        assert_eq!(unwritten(&v), b"456789!");
        assert_eq!(v.remaining(), 7);
        v.advance(7);
        assert_eq!(v.remaining(), 0);
        assert_eq!(v.read_iovec_len(), 0);
        v.clear();
        v.push(Bytes::from_static(b"again"));
        assert_eq!(unwritten(&v), b"again");
    }
}
