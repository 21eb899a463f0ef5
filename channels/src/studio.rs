//! Operation Studio at run time: definitions loaded from a folder (one `<id>.toml` each,
//! with its Ed25519 signature in `<id>.toml.sig`), validated (domain::operations), refused
//! one by one with the file and field named, and hot-reloaded when the folder changes.
//!
//! A signature is the base64 of the 64-byte Ed25519 signature of the file's exact bytes,
//! made with the operator's key (`arbat operations sign`); the node holds only the public
//! key. An unsigned or altered definition is refused and reported, never served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use domain::operations::{Definition, DefinitionError};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use tokio::sync::watch;

/// Most definition files a folder may hold, and the largest file read.
const MAX_FILES: usize = 500;
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The definitions in force and the problems of the last load.
#[derive(Debug, Default)]
pub struct Loaded {
    pub definitions: BTreeMap<String, Arc<Definition>>,
    pub problems: Vec<DefinitionError>,
    /// (file name, modified, length) of every file, to notice changes.
    stamp: Vec<(String, Option<SystemTime>, u64)>,
}

/// A shared, hot-reloadable catalogue.
#[derive(Clone)]
pub struct Catalogue {
    current: Arc<RwLock<Arc<Loaded>>>,
    dir: PathBuf,
    key: VerifyingKey,
}

impl Catalogue {
    /// Loads the folder now; problems are logged and kept for `problems()`.
    pub fn load(dir: &Path, key: VerifyingKey) -> Catalogue {
        let loaded = load_dir(dir, &key);
        report(&loaded);
        Catalogue {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            dir: dir.to_owned(),
            key,
        }
    }

    fn snapshot(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Definition>> {
        self.snapshot().definitions.get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Definition>> {
        self.snapshot().definitions.values().cloned().collect()
    }

    pub fn problems(&self) -> Vec<DefinitionError> {
        self.snapshot().problems.clone()
    }

    /// Reloads when a file changed (name, time or size); returns whether it did.
    pub fn reload_if_changed(&self) -> bool {
        if stamp(&self.dir) == self.snapshot().stamp {
            return false;
        }
        let loaded = load_dir(&self.dir, &self.key);
        report(&loaded);
        tracing::info!(
            definitions = loaded.definitions.len(),
            refused = loaded.problems.len(),
            "operation definitions reloaded"
        );
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(loaded),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(loaded),
        }
        true
    }

    /// Polls the folder every `every` until shutdown (no file-watching dependency).
    pub fn spawn_reload(&self, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let catalogue = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let c = catalogue.clone();
                        let _ = tokio::task::spawn_blocking(move || c.reload_if_changed()).await;
                    }
                    changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
                }
            }
        });
    }
}

fn report(loaded: &Loaded) {
    for problem in &loaded.problems {
        tracing::error!(file = %problem.file, field = %problem.field, reason = %problem.reason,
            "operation definition refused");
    }
}

fn definition_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "sig"))
        .collect();
    files.sort();
    files.truncate(MAX_FILES * 2);
    files
}

fn stamp(dir: &Path) -> Vec<(String, Option<SystemTime>, u64)> {
    definition_files(dir)
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            (
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            )
        })
        .collect()
}

/// Loads every `*.toml` of the folder, each verified and validated on its own.
pub fn load_dir(dir: &Path, key: &VerifyingKey) -> Loaded {
    let mut loaded = Loaded {
        stamp: stamp(dir),
        ..Loaded::default()
    };
    if !dir.is_dir() {
        loaded.problems.push(DefinitionError {
            file: dir.display().to_string(),
            field: "(folder)".into(),
            reason: "not a readable folder".into(),
        });
        return loaded;
    }
    let files: Vec<PathBuf> = definition_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .take(MAX_FILES)
        .collect();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match load_file(&path, &name, key) {
            Ok(definition) => {
                loaded
                    .definitions
                    .insert(definition.id().to_owned(), Arc::new(definition));
            }
            Err(problem) => loaded.problems.push(problem),
        }
    }
    loaded
}

fn load_file(path: &Path, name: &str, key: &VerifyingKey) -> Result<Definition, DefinitionError> {
    let problem = |field: &str, reason: String| DefinitionError {
        file: name.to_owned(),
        field: field.to_owned(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| problem("(file)", e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(problem(
            "(file)",
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| problem("(file)", e.to_string()))?;
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".sig");
    let signature = std::fs::read_to_string(PathBuf::from(sig_path))
        .map_err(|_| problem("(signature)", "unsigned: no .sig file beside it".into()))?;
    verify(&bytes, &signature, key).map_err(|reason| problem("(signature)", reason))?;
    let text = String::from_utf8(bytes).map_err(|_| problem("(file)", "not UTF-8".into()))?;
    Definition::parse(name, &text)
}

/// Checks a base64 signature of `bytes`.
pub fn verify(bytes: &[u8], signature: &str, key: &VerifyingKey) -> Result<(), String> {
    let raw = STANDARD
        .decode(signature.trim())
        .map_err(|_| "the signature is not base64".to_owned())?;
    let signature =
        Signature::from_slice(&raw).map_err(|_| "the signature is not 64 bytes".to_owned())?;
    key.verify(bytes, &signature)
        .map_err(|_| "the signature does not match: altered, or signed with another key".into())
}

/// Signs `bytes`; the base64 text of a `.sig` file.
pub fn sign(bytes: &[u8], key: &SigningKey) -> String {
    STANDARD.encode(key.sign(bytes).to_bytes())
}

/// A public key from its base64 text (32 bytes).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let raw = STANDARD
        .decode(text.trim())
        .map_err(|_| "the public key is not base64".to_owned())?;
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| "the public key is not 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_owned())
}

/// A signing key from its base64 text (the 32-byte seed).
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let raw = STANDARD
        .decode(text.trim())
        .map_err(|_| "the signing key is not base64".to_owned())?;
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| "the signing key is not 32 bytes".to_owned())?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A new key pair from 32 random bytes: (signing key, public key), both base64.
pub fn key_pair(seed: [u8; 32]) -> (String, String) {
    let key = SigningKey::from_bytes(&seed);
    (
        STANDARD.encode(key.to_bytes()),
        STANDARD.encode(key.verifying_key().to_bytes()),
    )
}

/// Signs every `*.toml` of a folder, writing `<file>.sig` beside it; returns the count.
pub fn sign_dir(dir: &Path, key: &SigningKey) -> std::io::Result<usize> {
    let mut count = 0;
    for path in definition_files(dir) {
        if path.extension().is_some_and(|e| e == "toml") {
            let bytes = std::fs::read(&path)?;
            let mut sig = path.as_os_str().to_owned();
            sig.push(".sig");
            std::fs::write(PathBuf::from(sig), sign(&bytes, key) + "\n")?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_definitions_verify_and_tampered_ones_do_not() {
        let (secret, public) = key_pair([7u8; 32]);
        let signing = parse_signing_key(&secret).unwrap();
        let key = parse_public_key(&public).unwrap();
        let text = b"id = \"x\"\n";
        let signature = sign(text, &signing);
        assert!(verify(text, &signature, &key).is_ok());
        assert!(verify(b"id = \"y\"\n", &signature, &key).is_err());
        let (_, other) = key_pair([8u8; 32]);
        assert!(verify(text, &signature, &parse_public_key(&other).unwrap()).is_err());
        assert!(verify(text, "not base64!", &key).is_err());
        assert!(verify(text, "AAAA", &key).is_err());
        assert!(parse_public_key("AAAA").is_err());
    }

    #[test]
    fn the_shipped_folder_loads_with_the_dev_key_only() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../operations"));
        let dev = std::fs::read_to_string(dir.join("dev-public.key")).unwrap();
        let loaded = load_dir(dir, &parse_public_key(&dev).unwrap());
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert!(loaded.definitions.len() >= 6);
        let (_, other) = key_pair([9u8; 32]);
        let refused = load_dir(dir, &parse_public_key(&other).unwrap());
        assert!(refused.definitions.is_empty());
        assert!(refused.problems.iter().all(|p| p.field == "(signature)"));
    }
}
