//! One stanza to typed values. (stub: being written)

use super::{error::ParseError, Message};

pub fn parse_message(_stanza: &str) -> Result<Message, ParseError> {
    todo!()
}
