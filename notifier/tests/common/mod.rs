//! Local stand-ins for the providers, over real sockets: an HTTP server speaking HTTP/1.1
//! and HTTP/2 (prior knowledge, as the APNs test needs) and a minimal SMTP server.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// When the server had read the whole request.
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            headers: vec![],
            body: body.into(),
            delay: None,
        }
    }
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![],
            body: body.into(),
            delay: None,
        }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

/// An HTTP/1.1 + h2c server; `handler` gets each request and its index (0-based).
pub struct MockHttp {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockHttp {
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                                at: std::time::Instant::now(),
                            };
                            let index = {
                                let mut all = recorded.lock().unwrap();
                                all.push(rec.clone());
                                all.len() - 1
                            };
                            let reply = handler(&rec, index);
                            if let Some(d) = reply.delay {
                                tokio::time::sleep(d).await;
                            }
                            let mut response = Response::builder().status(reply.status);
                            for (k, v) in reply.headers {
                                response = response.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                response.body(Full::new(Bytes::from(reply.body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for MockHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One received e-mail.
#[derive(Clone, Debug)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// When the server had the whole message.
    pub at: std::time::Instant,
}

/// A minimal SMTP server (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), plain text.
pub struct MockSmtp {
    pub port: u16,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockSmtp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let store = mails.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 mock ESMTP\r\n").await;
                    let (mut from, mut to) = (String::new(), Vec::new());
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let answer: &[u8] =
                            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                                b"250-mock\r\n250 8BITMIME\r\n"
                            } else if upper.starts_with("MAIL FROM:") {
                                from = line[10..].trim().to_owned();
                                b"250 OK\r\n"
                            } else if upper.starts_with("RCPT TO:") {
                                to.push(line[8..].trim().to_owned());
                                b"250 OK\r\n"
                            } else if upper == "DATA" {
                                let _ = write.write_all(b"354 go ahead\r\n").await;
                                let mut data = String::new();
                                while let Ok(Some(l)) = lines.next_line().await {
                                    if l == "." {
                                        break;
                                    }
                                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                                    data.push('\n');
                                }
                                store.lock().unwrap().push(Mail {
                                    from: from.clone(),
                                    to: std::mem::take(&mut to),
                                    data,
                                    at: std::time::Instant::now(),
                                });
                                b"250 queued\r\n"
                            } else if upper == "QUIT" {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            } else {
                                b"250 OK\r\n"
                            };
                        if write.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, mails, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.mails.lock().unwrap().len()
    }
}

impl Drop for MockSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const FCM_KEY: &str = include_str!("../fixtures/fcm_rsa.pem");
pub const FCM_PUB: &str = include_str!("../fixtures/fcm_rsa_pub.pem");
pub const APNS_KEY: &str = include_str!("../fixtures/apns.p8");
pub const APNS_PUB: &str = include_str!("../fixtures/apns_pub.pem");

/// A service-account JSON whose `token_uri` points at a mock.
pub fn service_account(token_uri: &str) -> notifier::providers::fcm::ServiceAccount {
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "arbat-test",
        "client_email": "notifier@arbat-test.iam.gserviceaccount.com",
        "private_key": FCM_KEY,
        "token_uri": token_uri,
    });
    notifier::providers::fcm::ServiceAccount::from_json(&json.to_string()).unwrap()
}

/// The FCM stand-in: `/token` checks the RS256 assertion and issues `tok-<n>` (lifetime
/// `expires_in`); `/v1/projects/arbat-test/messages:send` calls `send`.
pub async fn mock_fcm(
    expires_in: u64,
    send: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
) -> MockHttp {
    let tokens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    MockHttp::start(move |req, _| {
        if req.path == "/token" {
            let form: Vec<(String, String)> = url_decode_form(&req.body);
            let get = |k: &str| {
                form.iter()
                    .find(|(a, _)| a == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            if get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
                return Reply::status(400, r#"{"error":"unsupported_grant_type"}"#);
            }
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[req_token_uri(req)]);
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(FCM_PUB.as_bytes()).unwrap();
            match jsonwebtoken::decode::<serde_json::Value>(&get("assertion"), &key, &validation) {
                Ok(data)
                    if data.claims["scope"]
                        == "https://www.googleapis.com/auth/firebase.messaging"
                        && data.claims["iss"] == "notifier@arbat-test.iam.gserviceaccount.com" => {}
                _ => return Reply::status(400, r#"{"error":"invalid_grant"}"#),
            }
            let n = tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            return Reply::ok(format!(
                r#"{{"access_token":"tok-{n}","expires_in":{expires_in},"token_type":"Bearer"}}"#
            ));
        }
        let n = sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        send(req, n)
    })
    .await
}

fn req_token_uri(req: &Recorded) -> String {
    format!("http://{}/token", req.header("host").unwrap_or_default())
}

pub fn url_decode_form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(raw: &str) -> String {
    let raw = raw.replace('+', " ");
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
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
