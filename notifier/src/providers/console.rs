//! The embedded demo's SMS stand-in (API.md): prints messages, codes included, to the console
//! under a warning, so a demo node can register customers without a gateway.

use async_trait::async_trait;

use super::{Outgoing, Provider, SendError};

pub struct ConsoleSms;

#[async_trait]
impl Provider for ConsoleSms {
    fn name(&self) -> &'static str {
        "console"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        tracing::warn!("no SMS gateway configured (demo): printing the message instead");
        println!("[demo sms] to {}: {}", message.to, message.body);
        Ok(())
    }
}
