//! On-disk node state: the WireGuard private key and the last config snapshot.
//!
//! Both files are written atomically (temporary file, fsync, rename) with mode 0600, so a crash
//! never leaves half a key or half a config, and other local users cannot read them.

use kakuremichi_proto::{ConfigSnapshot, NodeRole};
use kakuremichi_tunnel::PrivateKey;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a WireGuard private key; move it away to generate a new key")]
    BadKey { path: PathBuf },
}

/// Loads the WireGuard key kept at `path`, creating it on first start.
pub fn load_or_create_key(path: &Path) -> Result<PrivateKey, StateError> {
    let path = path.to_path_buf();
    match std::fs::read_to_string(&path) {
        Ok(text) => PrivateKey::from_base64(&text).map_err(|_| StateError::BadKey { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            write_private(&path, key.to_base64().as_bytes())?;
            tracing::info!(path = %path.display(), public_key = %key.public_key(), "generated WireGuard key");
            Ok(key)
        }
        Err(source) => Err(StateError::Io { path, source }),
    }
}

/// The node's data directory (or nothing, for a node that keeps no state). File names carry the
/// role (`gateway-wireguard.key`, `agent-config.json`), so roles may share one directory.
#[derive(Debug, Clone)]
pub struct NodeState {
    dir: Option<PathBuf>,
    role: &'static str,
}

impl NodeState {
    /// Creates `dir` (mode 0700) if needed.
    pub fn open(dir: Option<PathBuf>, role: NodeRole) -> Result<Self, StateError> {
        if let Some(d) = &dir {
            create_private_dir(d)?;
        }
        let role = match role {
            NodeRole::Gateway => "gateway",
            NodeRole::Agent => "agent",
        };
        Ok(Self { dir, role })
    }

    fn file(&self, what: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}-{what}", self.role)))
    }

    /// The persistent key, or a fresh one for a stateless node.
    pub fn key(&self) -> Result<PrivateKey, StateError> {
        match self.file("wireguard.key") {
            Some(path) => load_or_create_key(&path),
            None => Ok(PrivateKey::generate()),
        }
    }

    /// The cached snapshot if there is one and it is intact.
    pub fn cached_config(&self) -> Option<ConfigSnapshot> {
        let path = self.file("config.json")?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot read the cached config; starting without it, from Control");
                return None;
            }
        };
        let why = match serde_json::from_str::<ConfigSnapshot>(&text) {
            Ok(s) if s.is_intact() => return Some(s),
            Ok(_) => "its content does not match its config_hash".to_string(),
            Err(e) => format!("it is not a config snapshot ({e})"),
        };
        tracing::warn!(path = %path.display(), "ignoring the damaged cached config: {why}; starting without it, from Control");
        None
    }

    /// Reads a small state file of this role (`None` if absent or stateless).
    pub fn read(&self, what: &str) -> Option<String> {
        std::fs::read_to_string(self.file(what)?).ok()
    }

    /// Writes a small state file of this role atomically, mode 0600.
    pub fn write(&self, what: &str, bytes: &[u8]) -> Result<(), StateError> {
        match self.file(what) {
            Some(path) => write_private(&path, bytes),
            None => Ok(()),
        }
    }

    pub fn store_config(&self, snapshot: &ConfigSnapshot) -> Result<(), StateError> {
        let Some(path) = self.file("config.json") else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(snapshot).expect("snapshot serialises");
        write_private(&path, &json)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    // `mode` applies only to a file it creates: a stale temporary file left by a crash keeps
    // its own, so set it explicitly (keys and certificates must never become group-readable).
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(StateError::BadKey { .. })
        ));
    }

    #[test]
    fn config_cache_round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::open(Some(dir.path().join("nested")), NodeRole::Gateway).unwrap();
        let agent = NodeState::open(Some(dir.path().join("nested")), NodeRole::Agent).unwrap();
        assert!(state.cached_config().is_none());
        let snap = ConfigSnapshot {
            node_id: 5,
            ..Default::default()
        }
        .seal();
        state.store_config(&snap).unwrap();
        assert_eq!(state.cached_config(), Some(snap.clone()));
        assert!(
            agent.cached_config().is_none(),
            "roles sharing a directory do not collide"
        );
        let path = dir.path().join("nested").join("gateway-config.json");
        let tampered = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"node_id\": 5", "\"node_id\": 6");
        std::fs::write(&path, tampered).unwrap();
        assert!(state.cached_config().is_none());
        std::fs::write(&path, "{not json").unwrap();
        assert!(state.cached_config().is_none());
    }

    /// A crash can leave a temporary file behind with whatever mode it had: the key or the
    /// certificates renamed from it must still be owner-only.
    #[cfg(unix)]
    #[test]
    fn a_stale_temporary_file_never_makes_state_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = NodeState::open(Some(dir.path().to_path_buf()), NodeRole::Gateway).unwrap();
        for (what, tmp) in [
            ("config.json", "gateway-config.tmp"),
            ("wireguard.key", "gateway-wireguard.tmp"),
            ("certs.json", "gateway-certs.tmp"),
        ] {
            let tmp = dir.path().join(tmp);
            std::fs::write(&tmp, "stale").unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
            match what {
                "config.json" => state
                    .store_config(&ConfigSnapshot::default().seal())
                    .unwrap(),
                "wireguard.key" => drop(state.key().unwrap()),
                _ => state.write(what, b"{}").unwrap(),
            }
            let path = dir.path().join(format!("gateway-{what}"));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{what} is {mode:o}");
        }
    }

    #[test]
    fn stateless_node_works() {
        let state = NodeState::open(None, NodeRole::Agent).unwrap();
        assert!(state.key().is_ok());
        assert!(state.cached_config().is_none());
        state
            .store_config(&ConfigSnapshot::default().seal())
            .unwrap();
    }
}
