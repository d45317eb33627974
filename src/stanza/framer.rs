//! Cuts a byte stream into complete top-level stanzas. (stub: being written)

use super::error::FrameError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `<stream:stream ...>` opened; attributes in document order, values unescaped.
    StreamOpen { attrs: Vec<(String, String)> },
    /// One complete top-level stanza (depth 1 inside a stream, or depth 0 without one), as text.
    Stanza(String),
    /// `</stream:stream>`.
    StreamClose,
}

#[derive(Debug, Default)]
pub struct Framer {
    limits: Limits,
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer { limits }
    }
    pub fn push(&mut self, _bytes: &[u8]) {
        let _ = self.limits;
        todo!()
    }
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        todo!()
    }
}
