//! Control's own certificate authority, for `tls: internal` tunnels (local names, private
//! networks), like Caddy's `tls internal`.
//!
//! The root is created on first use in `<data_dir>/internal-ca/` (`root.crt`, and `root.key` with
//! mode 0600) and kept forever; users trust `root.crt` in their browser or with `curl --cacert`.
//! Leaf certificates are short-lived and renewed like ACME ones, at two thirds of their lifetime.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Lifetime of the root.
const ROOT_VALIDITY: Duration = Duration::days(3650);
/// Lifetime of a leaf; browsers accept at most 398 days, short keeps a leaked key short-lived.
const LEAF_VALIDITY: Duration = Duration::days(30);
/// Leaves start a little in the past, so clocks slightly behind still accept them.
const BACKDATE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot use the internal CA at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the internal CA files in {0} are damaged; move the directory away to create a new CA (browsers must then trust the new root)")]
    Damaged(PathBuf),
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate issued by the internal CA, with its key (secret).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The internal CA: its root certificate and key.
pub struct InternalCa {
    root_pem: String,
    key_pem: String,
    root_path: PathBuf,
}

impl std::fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCa")
            .field("root_path", &self.root_path)
            .finish_non_exhaustive()
    }
}

impl InternalCa {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let root_path = dir.join("root.crt");
        let key_path = dir.join("root.key");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        if root_path.exists() && key_path.exists() {
            let root_pem = std::fs::read_to_string(&root_path).map_err(io(&root_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let ca = Self {
                root_pem,
                key_pem,
                root_path,
            };
            ca.issuer()
                .map_err(|_| CaError::Damaged(dir.to_path_buf()))?;
            return Ok(ca);
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "kakuremichi");
        name.push(DnType::CommonName, "kakuremichi internal CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_VALIDITY;
        let root = params.self_signed(&key)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
        write_file(&root_path, root.pem().as_bytes(), 0o644).map_err(io(&root_path))?;
        tracing::info!(root = %root_path.display(), "created the internal CA");
        Ok(Self {
            root_pem: root.pem(),
            key_pem: key.serialize_pem(),
            root_path,
        })
    }

    /// Where the root certificate is, to tell users what to trust.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    #[cfg(test)]
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, rcgen::Error> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Issuer::from_ca_cert_pem(&self.root_pem, key)
    }

    /// Issues a server certificate for `host`; the chain is the leaf then the root.
    pub fn issue(&self, host: &str) -> Result<Issued, CaError> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let leaf = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: format!("{}{}", leaf.pem(), self.root_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    // `mode` applies only to a file it creates: a stale temporary file left by a crash keeps
    // its own, so set it explicitly (a key must never be renamed into place group-readable).
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_stale_temporary_file_never_makes_the_key_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("internal-ca");
        std::fs::create_dir_all(&ca_dir).unwrap();
        let stale = ca_dir.join("root.tmp");
        std::fs::write(&stale, "left by a crash").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        InternalCa::load_or_create(&ca_dir).unwrap();
        let mode = std::fs::metadata(ca_dir.join("root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "root.key is {mode:o}");
    }

    #[test]
    fn creates_once_issues_and_keeps_the_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("internal-ca");
        let ca = InternalCa::load_or_create(&ca_dir).unwrap();
        let again = InternalCa::load_or_create(&ca_dir).unwrap();
        assert_eq!(ca.root_pem(), again.root_pem(), "the root is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ca_dir.join("root.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let issued = ca.issue("hello.localhost").unwrap();
        let info = super::super::policy::cert_info(&issued.cert_pem).unwrap();
        assert_eq!(info.issuer, "kakuremichi internal CA");
        assert!(info.not_after > OffsetDateTime::now_utc() + Duration::days(29));
        assert!(issued.cert_pem.ends_with(ca.root_pem()));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    /// Verifies `issued` for `name` against `ca`'s root as a TLS client would.
    fn verify(ca: &InternalCa, issued: &Issued, name: &str) -> Result<(), rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let chain: Vec<_> = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn leaf_verifies_against_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = InternalCa::load_or_create(dir.path()).unwrap();
        let issued = ca.issue("app.internal.test").unwrap();
        verify(&ca, &issued, "app.internal.test").unwrap();
        // A wildcard: its SAN is the dNSName `*.apps.test`, valid for one label below only.
        let wildcard = ca.issue("*.apps.test").unwrap();
        verify(&ca, &wildcard, "a.apps.test").unwrap();
        verify(&ca, &wildcard, "b.apps.test").unwrap();
        assert!(verify(&ca, &wildcard, "apps.test").is_err());
        assert!(verify(&ca, &wildcard, "x.a.apps.test").is_err());
        std::fs::write(dir.path().join("root.key"), "garbage").unwrap();
        assert!(matches!(
            InternalCa::load_or_create(dir.path()),
            Err(CaError::Damaged(_))
        ));
    }
}
