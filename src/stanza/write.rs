//! Serialises what readtrack emits. (stub: being written)

use super::Outgoing;

pub fn outgoing(_out: &Outgoing) -> String {
    todo!()
}
