//! The ACME client (RFC 8555, through instant-acme): the account, kept in the database, and one
//! order for one hostname, with its challenges answered by every Gateway or in DNS.
//!
//! An HTTP-01 or TLS-ALPN-01 order publishes both the HTTP-01 key authorization and the
//! TLS-ALPN-01 certificate to the hub (so into every Gateway's snapshot), waits until every
//! online Gateway has confirmed a snapshot holding them, and only then asks the CA to validate
//! the chosen one: whichever Gateway the CA reaches can answer. A DNS-01 order writes its TXT
//! record through the zone's provider and waits until the zone's servers answer it ([`Dns01`]).

use super::dns01::{Dns01, Target};
use super::policy::Failure;
use super::settings::{AcmeConfig, Challenge};
use crate::hub::Hub;
use crate::store::Store;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use kakuremichi_proto::{TlsAlpnChallenge, TlsCertificate};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long the CA may take to validate and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// A certificate from the CA: the chain (leaf first) and its key. The key is secret.
pub struct Obtained {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What the certificate scheduler needs from an ACME CA: [`Acme`] in production, an in-memory
/// order counter in tests (the seam that lets the scheduler's pacing be tested without a CA).
pub trait AcmeClient: Send + Sync + 'static {
    /// Runs one order for `host` to the end, answering `challenge`: a certificate, or why not.
    fn obtain<'a>(
        &'a self,
        host: &'a str,
        challenge: Challenge,
        hub: &'a Hub,
    ) -> BoxFuture<'a, Result<Obtained, Failure>>;

    /// The CA's suggested renewal window (ARI) for a certificate, when it offers one.
    fn renewal_window<'a>(
        &'a self,
        leaf_der: &'a [u8],
    ) -> BoxFuture<'a, Option<(time::OffsetDateTime, time::OffsetDateTime)>>;
}

impl AcmeClient for Acme {
    fn obtain<'a>(
        &'a self,
        host: &'a str,
        challenge: Challenge,
        hub: &'a Hub,
    ) -> BoxFuture<'a, Result<Obtained, Failure>> {
        Box::pin(Acme::obtain(self, host, challenge, hub))
    }

    fn renewal_window<'a>(
        &'a self,
        leaf_der: &'a [u8],
    ) -> BoxFuture<'a, Option<(time::OffsetDateTime, time::OffsetDateTime)>> {
        Box::pin(Acme::renewal_window(self, leaf_der))
    }
}

/// The ACME client of one Control: settings, and the account once loaded or created.
pub struct Acme {
    config: AcmeConfig,
    store: Store,
    account: Mutex<Option<Account>>,
    dns01: Arc<Dns01>,
}

impl Acme {
    pub fn new(config: AcmeConfig, store: Store, dns01: Arc<Dns01>) -> Self {
        Self {
            config,
            store,
            account: Mutex::new(None),
            dns01,
        }
    }

    /// The account: from memory, else from the database, else created at the CA (and stored).
    pub async fn account(&self) -> Result<Account, Failure> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let directory = &self.config.directory_url;
        let stored = self.store.acme_account(directory).await.map_err(internal)?;
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&json).map_err(internal)?;
                Account::builder_with_http(self.http()?)
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| ca(directory, e))?
            }
            None => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self.eab()?;
                let (account, credentials) = Account::builder_with_http(self.http()?)
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|e| ca(directory, e))?;
                let json = serde_json::to_string(&credentials).map_err(internal)?;
                self.store
                    .save_acme_account(directory, &json)
                    .await
                    .map_err(internal)?;
                tracing::info!(%directory, "created the ACME account");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    fn eab(&self) -> Result<Option<ExternalAccountKey>, Failure> {
        use base64::Engine as _;
        let (Some(kid), Some(hmac)) = (&self.config.eab_kid, &self.config.eab_hmac_key) else {
            return Ok(None);
        };
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(hmac.trim().trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(hmac.trim()))
            .map_err(|_| Failure::Internal {
                detail: "KAKUREMICHI_ACME_EAB_HMAC_KEY is not base64".into(),
            })?;
        Ok(Some(ExternalAccountKey::new(kid.clone(), &key)))
    }

    /// HTTPS client for the ACME server: the public web roots plus `ca_roots`.
    fn http(&self) -> Result<Box<dyn instant_acme::HttpClient>, Failure> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &self.config.ca_roots {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Failure::Internal {
                    detail: format!(
                        "cannot read KAKUREMICHI_ACME_CA_ROOTS {}: {e}",
                        path.display()
                    ),
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| Failure::Internal {
                    detail: format!("a certificate in {} is unusable: {e}", path.display()),
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(internal)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client: HyperClient<_, BodyWrapper<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Box::new(client))
    }

    /// Runs one order for `host` to the end: a certificate, or why not. A DNS-01 order's record
    /// is removed however the order ends.
    pub async fn obtain(
        &self,
        host: &str,
        challenge: Challenge,
        hub: &Hub,
    ) -> Result<Obtained, Failure> {
        let target = match challenge {
            // Where the record goes is settled before the CA is asked for anything.
            Challenge::Dns01 => Some(self.dns01.target(host).await?),
            _ => None,
        };
        let result = self.order(host, challenge, hub, target.as_ref()).await;
        if let Some(target) = target {
            self.dns01.clean_up(target).await;
        }
        result
    }

    async fn order(
        &self,
        host: &str,
        challenge: Challenge,
        hub: &Hub,
        target: Option<&Target>,
    ) -> Result<Obtained, Failure> {
        let account = self.account().await?;
        let directory = &self.config.directory_url;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| ca(directory, e))?;
        let mut published = Published::new(hub);
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| ca(directory, e))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(Failure::Ca {
                        detail: format!("the authorization for {host} is {other:?}"),
                    })
                }
            }
            let thumbprint = account.key_thumbprint().to_string();
            let token = |ty: ChallengeType| {
                authz
                    .challenges
                    .iter()
                    .find(|c| c.r#type == ty)
                    .map(|c| c.token.clone())
            };
            let ty = match (challenge, target) {
                (Challenge::Dns01, Some(target)) => {
                    let Some(t) = token(ChallengeType::Dns01) else {
                        return Err(offers_none(host, "dns-01"));
                    };
                    let value = dns_value(&format!("{t}.{thumbprint}"));
                    self.dns01.publish(target, &[value]).await?;
                    ChallengeType::Dns01
                }
                _ => {
                    let ty = Self::publish_to_gateways(
                        host,
                        challenge,
                        &thumbprint,
                        &token,
                        &mut published,
                    )?;
                    let ready = hub
                        .wait_gateways_ready(&published.ids(), published.timeout(&self.config))
                        .await
                        .map_err(|_| Failure::NoGateway)?;
                    tracing::info!(%host, gateways = ready, "challenge on every Gateway");
                    ty
                }
            };
            tracing::info!(%host, challenge = ?ty, "asking the CA to validate");
            let Some(mut handle) = authz.challenge(ty) else {
                return Err(Failure::Internal {
                    detail: "the chosen challenge disappeared".into(),
                });
            };
            handle.set_ready().await.map_err(|e| ca(directory, e))?;
        }
        let status = order.poll_ready(&POLL).await;
        if !matches!(status, Ok(OrderStatus::Ready)) {
            // The authorization's challenge carries the useful error (e.g. connection refused).
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authz)) = authorizations.next().await {
                if let Ok(state) = authz.refresh().await {
                    if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                        return Err(validation_failed(
                            challenge,
                            target,
                            p.r#type.as_deref(),
                            p.detail.as_deref(),
                        ));
                    }
                }
            }
            return Err(match status {
                Err(e) => ca(directory, e),
                Ok(s) => Failure::Ca {
                    detail: format!("the order for {host} ended {s:?}"),
                },
            });
        }
        drop(published);
        let key_pem = order.finalize().await.map_err(|e| ca(directory, e))?;
        let cert_pem = order
            .poll_certificate(&POLL)
            .await
            .map_err(|e| ca(directory, e))?;
        Ok(Obtained { cert_pem, key_pem })
    }

    /// Puts both Gateway challenges of one authorization into the hub; returns the one to
    /// validate.
    fn publish_to_gateways(
        host: &str,
        challenge: Challenge,
        thumbprint: &str,
        token: &dyn Fn(ChallengeType) -> Option<String>,
        published: &mut Published<'_>,
    ) -> Result<ChallengeType, Failure> {
        let (http_token, alpn_token) = (
            token(ChallengeType::Http01),
            token(ChallengeType::TlsAlpn01),
        );
        if let Some(t) = &http_token {
            published.http01(t, &format!("{t}.{thumbprint}"));
        }
        if let Some(t) = &alpn_token {
            let key_authorization = format!("{t}.{thumbprint}");
            published.tls_alpn01(host, t, challenge_certificate(host, &key_authorization)?);
        }
        match (challenge, &http_token, &alpn_token) {
            (Challenge::TlsAlpn01, _, Some(_)) => Ok(ChallengeType::TlsAlpn01),
            (Challenge::Http01, Some(_), _) => Ok(ChallengeType::Http01),
            (Challenge::TlsAlpn01, _, None) => Err(offers_none(host, "tls-alpn-01")),
            _ => Err(offers_none(host, "http-01")),
        }
    }

    /// ARI (RFC 9773): the CA's suggested renewal window for a certificate, when it offers one.
    pub async fn renewal_window(
        &self,
        leaf_der: &[u8],
    ) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
        let account = self.account().await.ok()?;
        let der = CertificateDer::from(leaf_der.to_vec());
        let id = instant_acme::CertificateIdentifier::try_from(&der).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, _)) => Some((info.suggested_window.start, info.suggested_window.end)),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "ACME renewal information unavailable");
                None
            }
        }
    }
}

/// The TLS-ALPN-01 certificate (RFC 8737): self-signed for `host`, with the critical
/// `acmeIdentifier` extension holding SHA-256 of the key authorization.
fn challenge_certificate(host: &str, key_authorization: &str) -> Result<TlsCertificate, Failure> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key_authorization.as_bytes());
    let key = rcgen::KeyPair::generate().map_err(internal)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(internal)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let cert = params.self_signed(&key).map_err(internal)?;
    Ok(TlsCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Challenges this order put into the hub; removed (and the Gateways told) when dropped, however
/// the order ends.
struct Published<'a> {
    hub: &'a Hub,
    http01: Vec<String>,
    tls_alpn01: Vec<(String, String)>,
}

impl<'a> Published<'a> {
    fn new(hub: &'a Hub) -> Self {
        Self {
            hub,
            http01: Vec::new(),
            tls_alpn01: Vec::new(),
        }
    }

    fn http01(&mut self, token: &str, key_authorization: &str) {
        self.hub.edit_challenges(|c| {
            c.http01
                .insert(token.to_string(), key_authorization.to_string());
        });
        self.http01.push(token.to_string());
    }

    fn tls_alpn01(&mut self, host: &str, token: &str, certificate: TlsCertificate) {
        self.hub.edit_challenges(|c| {
            c.tls_alpn01.insert(
                host.to_string(),
                TlsAlpnChallenge {
                    token: token.to_string(),
                    certificate,
                },
            );
        });
        self.tls_alpn01.push((host.to_string(), token.to_string()));
    }

    fn ids(&self) -> Vec<String> {
        let http = self.http01.iter().map(|t| format!("http01:{t}"));
        let alpn = self
            .tls_alpn01
            .iter()
            .map(|(_, t)| format!("tls-alpn01:{t}"));
        http.chain(alpn).collect()
    }

    fn timeout(&self, config: &AcmeConfig) -> Duration {
        config.gateways_ready_timeout
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        if self.http01.is_empty() && self.tls_alpn01.is_empty() {
            return;
        }
        let (http01, alpn) = (&self.http01, &self.tls_alpn01);
        self.hub.edit_challenges(|c| {
            for t in http01 {
                c.http01.remove(t);
            }
            for (host, token) in alpn {
                // Only ours: another order for the same name may have replaced it.
                if c.tls_alpn01.get(host).is_some_and(|x| &x.token == token) {
                    c.tls_alpn01.remove(host);
                }
            }
        });
    }
}

/// The TXT value of DNS-01 (RFC 8555 §8.4): base64url of SHA-256 of the key authorization.
fn dns_value(key_authorization: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(key_authorization.as_bytes()))
}

fn offers_none(host: &str, kind: &str) -> Failure {
    Failure::Ca {
        detail: format!("the CA offers no {kind} challenge for {host}"),
    }
}

/// A challenge the CA could not validate, from its problem document.
fn validation_failed(
    challenge: Challenge,
    target: Option<&Target>,
    kind: Option<&str>,
    detail: Option<&str>,
) -> Failure {
    let port = match challenge {
        Challenge::TlsAlpn01 => 443,
        _ => 80,
    };
    let failure = Failure::from_problem(kind, detail, port);
    match (challenge, target, &failure) {
        (Challenge::Dns01, _, Failure::RateLimited { .. }) => failure,
        (Challenge::Dns01, Some(target), _) => Failure::Dns01 {
            detail: format!(
                "the CA did not find the expected TXT record at {} (zone {}): {}",
                target.via.as_deref().unwrap_or(&target.name),
                target.zone.row.zone,
                detail.unwrap_or("no detail given")
            ),
        },
        _ => failure,
    }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Internal {
        detail: e.to_string(),
    }
}

/// An error talking to the CA; problem documents keep their type for the user's sentence.
fn ca(directory: &str, e: instant_acme::Error) -> Failure {
    match e {
        instant_acme::Error::Api(p) => {
            Failure::from_problem(p.r#type.as_deref(), p.detail.as_deref(), 80)
        }
        other => Failure::Ca {
            detail: format!("{other} (ACME directory {directory})"),
        },
    }
}
