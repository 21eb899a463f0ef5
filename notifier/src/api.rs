//! The HTTP-facing operations, framework-free: the gateway maps them onto
//! `GET/PUT /v1/notification-preferences` and `POST/DELETE /v1/devices`, and
//! [`ApiError`] onto problem+json (`status`, stable `code`, `detail`).

use kernel::CustomerId;
use serde::{Deserialize, Serialize};

use crate::model::{Device, Language, Platform, Preferences};
use crate::store::{NotifStoreError, NotifierStore};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("invalid notification preferences: {0}")]
    InvalidPreferences(String),
    #[error("invalid device: {0}")]
    InvalidDevice(String),
    #[error("device not found")]
    DeviceNotFound,
    #[error(transparent)]
    Store(#[from] NotifStoreError),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidPreferences(_) => "invalid_preferences",
            ApiError::InvalidDevice(_) => "invalid_device",
            ApiError::DeviceNotFound => "device_not_found",
            ApiError::Store(_) => "service_unavailable",
        }
    }
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidPreferences(_) | ApiError::InvalidDevice(_) => 422,
            ApiError::DeviceNotFound => 404,
            ApiError::Store(_) => 503,
        }
    }
}

/// Reads a body that must be a JSON object: serde would also fill a struct from an array
/// (`[null, null]`), which no client means.
fn from_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("the body must be a JSON object"));
    }
    serde_json::from_value(value)
}

/// `GET /v1/notification-preferences`: the saved preferences with every kind's effective rule.
pub async fn get_preferences(
    store: &dyn NotifierStore,
    customer: &CustomerId,
) -> Result<Preferences, ApiError> {
    let mut prefs = store.preferences(customer).await?.unwrap_or_default();
    for kind in crate::model::Kind::ALL {
        let rule = prefs.rule(kind);
        prefs.kinds.insert(kind, rule);
    }
    Ok(prefs)
}

/// `PUT /v1/notification-preferences` with the JSON body; returns what `GET` will show.
pub async fn put_preferences(
    store: &dyn NotifierStore,
    customer: &CustomerId,
    body: &[u8],
) -> Result<Preferences, ApiError> {
    let prefs: Preferences =
        from_object(body).map_err(|e| ApiError::InvalidPreferences(e.to_string()))?;
    prefs.validate().map_err(ApiError::InvalidPreferences)?;
    store.put_preferences(customer, &prefs).await?;
    get_preferences(store, customer).await
}

/// The body of `POST /v1/devices`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistration {
    pub platform: String,
    pub token: String,
    #[serde(default)]
    pub language: Option<String>,
}

/// `POST /v1/devices`: registers (or moves) a push token. Idempotent.
pub async fn register_device(
    store: &dyn NotifierStore,
    customer: &CustomerId,
    body: &[u8],
) -> Result<Device, ApiError> {
    let reg: DeviceRegistration =
        from_object(body).map_err(|e| ApiError::InvalidDevice(e.to_string()))?;
    let platform = Platform::parse(&reg.platform)
        .ok_or_else(|| ApiError::InvalidDevice("platform must be \"android\" or \"ios\"".into()))?;
    let token_ok = !reg.token.is_empty()
        && reg.token.len() <= 4096
        && reg.token.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if !token_ok {
        return Err(ApiError::InvalidDevice(
            "token must be 1 to 4096 printable characters without '/'".into(),
        ));
    }
    let language =
        match reg.language.as_deref() {
            None => None,
            Some(raw) => Some(Language::parse(raw).ok_or_else(|| {
                ApiError::InvalidDevice("language must be \"ru\" or \"en\"".into())
            })?),
        };
    let device = Device {
        platform,
        token: reg.token,
        language,
    };
    store.upsert_device(customer, &device).await?;
    Ok(device)
}

/// `DELETE /v1/devices/{token}`: only the customer's own devices.
pub async fn delete_device(
    store: &dyn NotifierStore,
    customer: &CustomerId,
    token: &str,
) -> Result<(), ApiError> {
    if store.remove_device(customer, token).await? {
        Ok(())
    } else {
        Err(ApiError::DeviceNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Channel, Kind};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn preferences_and_devices_round_trip() {
        let store = MemoryStore::new();
        let me = CustomerId::parse("c1").unwrap();
        let other = CustomerId::parse("c2").unwrap();
        let shown = get_preferences(&store, &me).await.unwrap();
        assert_eq!(shown.kinds[&Kind::Code].channels, vec![Channel::Sms]);
        let put = put_preferences(
            &store,
            &me,
            br#"{"language":"en","kinds":{"offer":{"channels":["email"]}}}"#,
        )
        .await
        .unwrap();
        assert_eq!(put.language, Some(Language::En));
        assert_eq!(put.kinds[&Kind::Offer].channels, vec![Channel::Email]);
        let err = put_preferences(&store, &me, br#"{"kinds":{"code":{"channels":[]}}}"#)
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.status()), ("invalid_preferences", 422));
        assert_eq!(
            put_preferences(&store, &me, b"{\"surprise\":1}")
                .await
                .unwrap_err()
                .code(),
            "invalid_preferences"
        );
        // Arrays are not preferences, even ones serde could fill a struct from; nothing changes.
        for body in [&b"[null, null]"[..], b"[]", b"null", b"\"x\""] {
            let err = put_preferences(&store, &me, body).await.unwrap_err();
            assert_eq!(err.code(), "invalid_preferences", "{body:?}");
        }
        assert_eq!(
            get_preferences(&store, &me).await.unwrap().kinds[&Kind::Offer].channels,
            vec![Channel::Email]
        );

        let device = register_device(
            &store,
            &me,
            br#"{"platform":"ios","token":"abc","language":"ru"}"#,
        )
        .await
        .unwrap();
        assert_eq!(device.platform, Platform::Ios);
        assert_eq!(store.devices(&me).await.unwrap(), vec![device]);
        assert_eq!(
            register_device(&store, &me, br#"{"platform":"nokia","token":"x"}"#)
                .await
                .unwrap_err()
                .code(),
            "invalid_device"
        );
        assert_eq!(
            register_device(&store, &me, br#"["ios", "abc"]"#)
                .await
                .unwrap_err()
                .code(),
            "invalid_device"
        );
        assert_eq!(
            delete_device(&store, &other, "abc").await.unwrap_err(),
            ApiError::DeviceNotFound
        );
        delete_device(&store, &me, "abc").await.unwrap();
        assert!(store.devices(&me).await.unwrap().is_empty());
    }
}
