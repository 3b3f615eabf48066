//! A vectored write buffer made of `Bytes` slices, so the relay can send a chunk header, payload
//! slices of the upstream read buffer and a trailer in one `writev` without copying payload.

use bytes::Bytes;
use monoio::buf::IoVecBuf;

/// An owned list of byte slices and the iovec array that points into them.
#[derive(Default)]
pub struct BytesVec {
    parts: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

impl BytesVec {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            parts: Vec::with_capacity(n),
            iovecs: Vec::with_capacity(n),
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
    }
}

// SAFETY: every iovec points into a `Bytes` held in `parts`; `Bytes` never moves its heap data,
// and neither vector is modified while the runtime owns the value (it is passed by value to the
// write and only handed back when the operation has completed).
unsafe impl IoVecBuf for BytesVec {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}
