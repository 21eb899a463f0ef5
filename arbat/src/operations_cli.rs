//! `arbat operations keygen | sign | check`: the operator's Operation Studio tools.

use std::path::PathBuf;

use anyhow::Context as _;
use rand::RngCore;

#[derive(clap::Subcommand)]
pub enum OperationsCommand {
    /// Prints a new Ed25519 key pair (base64): keep the signing key secret, configure the
    /// public key as ARBAT_OPERATIONS_KEY.
    Keygen,
    /// Signs every `*.toml` in a folder, writing `<file>.sig` beside each.
    Sign {
        /// File holding the base64 signing key.
        #[arg(long)]
        key: PathBuf,
        folder: PathBuf,
    },
    /// Loads a folder as a node would and reports every refused definition (exit 1).
    Check {
        /// Base64 public key [default: the development key].
        #[arg(long, env = "ARBAT_OPERATIONS_KEY")]
        key: Option<String>,
        folder: PathBuf,
    },
}

/// Runs the command; the exit code.
pub fn run(command: OperationsCommand) -> anyhow::Result<u8> {
    match command {
        OperationsCommand::Keygen => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let (secret, public) = channels::studio::key_pair(seed);
            println!("signing key (secret): {secret}");
            println!("public key (ARBAT_OPERATIONS_KEY): {public}");
            Ok(0)
        }
        OperationsCommand::Sign { key, folder } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let key = channels::studio::parse_signing_key(&text).map_err(anyhow::Error::msg)?;
            let count = channels::studio::sign_dir(&folder, &key)
                .with_context(|| format!("signing {}", folder.display()))?;
            println!("signed {count} definitions in {}", folder.display());
            Ok(0)
        }
        OperationsCommand::Check { key, folder } => {
            let key = key.unwrap_or_else(|| crate::config::DEV_OPERATIONS_KEY.to_owned());
            let key = channels::studio::parse_public_key(&key).map_err(anyhow::Error::msg)?;
            let loaded = channels::studio::load_dir(&folder, &key);
            for id in loaded.definitions.keys() {
                println!("ok      {id}");
            }
            for problem in &loaded.problems {
                println!("REFUSED {problem}");
            }
            Ok(if loaded.problems.is_empty() { 0 } else { 1 })
        }
    }
}
