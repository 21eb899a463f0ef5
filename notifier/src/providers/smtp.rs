//! E-mail through lettre over SMTP: `smtps://` is implicit TLS, `smtp://` is STARTTLS
//! (required), except to a loopback host where it is plain (local test servers).
//! Credentials may be given in the URL (`smtp://user:pass@host:587`).

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Outgoing, Provider, SendError};

/// Pooled SMTP connections kept open. lettre closes a connection that comes back to a full
/// pool, so this must cover a worker's concurrency, or every send beyond it pays a fresh
/// connect + EHLO + QUIT.
pub const POOL_SIZE: u32 = 64;

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Smtp {
    /// Validates a URL and From address without building a transport.
    pub fn check(url: &str, from: &str) -> Result<(), String> {
        from.parse::<Mailbox>()
            .map_err(|e| format!("not a mailbox: {e}"))?;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        parsed.host_str().ok_or("the URL has no host")?;
        match parsed.scheme() {
            "smtp" | "smtps" => Ok(()),
            other => Err(format!(
                "unsupported scheme {other:?}: use smtp:// or smtps://"
            )),
        }
    }

    /// Builds the transport from `ARBAT_SMTP_URL`-style URLs and a From address.
    pub fn new(url: &str, from: &str, timeout: Duration) -> Result<Self, String> {
        let from: Mailbox = from.parse().map_err(|e| format!("not a mailbox: {e}"))?;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let host = parsed.host_str().ok_or("the URL has no host")?.to_owned();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let mut builder = match parsed.scheme() {
            "smtps" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&host).map_err(|e| e.to_string())?
            }
            "smtp" if loopback => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
            "smtp" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| e.to_string())?,
            other => {
                return Err(format!(
                    "unsupported scheme {other:?}: use smtp:// or smtps://"
                ));
            }
        };
        if let Some(port) = parsed.port() {
            builder = builder.port(port);
        }
        if !parsed.username().is_empty() {
            let user = percent_decode(parsed.username());
            let pass = percent_decode(parsed.password().unwrap_or(""));
            builder = builder.credentials(Credentials::new(user, pass));
        }
        Ok(Self {
            transport: builder
                .timeout(Some(timeout))
                .pool_config(PoolConfig::new().max_size(POOL_SIZE))
                .build(),
            from,
        })
    }
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(Ok(b)) = raw.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl Provider for Smtp {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let to: Mailbox = message
            .to
            .parse()
            .map_err(|_| SendError::InvalidRecipient {
                reason: "smtp: not an e-mail address".into(),
            })?;
        let domain = self.from.email.domain().to_owned();
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.title.clone())
            .message_id(Some(format!("<{}@{domain}>", message.request_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|e| SendError::Rejected {
                reason: format!("smtp: building the message: {e}"),
            })?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Rejected {
                reason: format!(
                    "smtp: permanent: {}",
                    e.status().map(|c| c.to_string()).unwrap_or_default()
                ),
            }),
            Err(_) => Err(SendError::retryable("smtp: temporary or transport error")),
        }
    }
}
