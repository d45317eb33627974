//! One handshake and a polite goodbye, for `readtrack check`: proves that the server's component
//! port answers and accepts the secret, without sending a stanza.

use tokio::io::AsyncWriteExt;

use super::handshake::STREAM_CLOSE;
use super::link::{establish, Established};
use super::{ComponentConfig, ComponentError, LinkCounters};

/// Connects, authenticates (all within `config.connect_timeout`) and closes the stream. An
/// error is the one the service would log for the same fault.
pub async fn probe(config: &ComponentConfig) -> Result<(), ComponentError> {
    let Established { mut write, .. } = establish(config, &LinkCounters::default()).await?;
    // The server has nothing to send after <handshake/>, so nothing is lost by not waiting for
    // its own close; a failed goodbye changes nothing about what the check proved.
    let _ = write.write_all(STREAM_CLOSE.as_bytes()).await;
    let _ = write.shutdown().await;
    Ok(())
}
