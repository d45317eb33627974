//! Errors of the stanza layer. (Helper: fill in the variants; keep messages exact and tested.)

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("stanza exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a message stanza: <{0}>")]
    NotMessage(String),
}
