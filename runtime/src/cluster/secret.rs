//! The swarm secret and everything derived from it: the ractor cookie, the public swarm id
//! used in discovery beacons, the invite token, and the TLS configuration.
//!
//! Trust model: whoever holds the 32-byte secret (`~/.myco/swarm.key`) is a member. Every
//! node derives the same certificate authority key from the secret, and signs a fresh node
//! certificate with it at start. Connections between nodes are mutual TLS that accept only
//! certificates from that authority, so a node without the secret cannot complete a
//! handshake, and everything on the wire is encrypted. The ractor cookie (also derived from
//! the secret) is checked on top. The secret never crosses the wire; the swarm id does (it is
//! a one-way hash), so discovery can skip other swarms' beacons without revealing anything.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

/// The name every node certificate is issued for; clients verify servers against it.
pub const TLS_SERVER_NAME: &str = "node.myco.swarm";

const TOKEN_PREFIX: &str = "myco1";

/// Errors loading or using the swarm secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "cannot read the swarm secret {path}: {source}; fix its permissions, or remove it to start a new swarm"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the swarm secret {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the swarm secret {path} is damaged (expected 64 hex digits); copy it again from a member, or join with `myco node --join-token TOKEN`"
    )]
    Malformed { path: String },
    #[error("that is not a myco invite token ({0}); get one with `myco invite` on a member node")]
    BadToken(&'static str),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),
}

/// The swarm's shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmSecret([u8; 32]);

impl std::fmt::Debug for SwarmSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwarmSecret(id {})", self.swarm_id())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SwarmSecret {
    /// A new random secret (from the OS's generator).
    pub fn generate() -> Result<SwarmSecret, SecretError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| SecretError::Tls(format!("no randomness: {e}")))?;
        Ok(SwarmSecret(key))
    }

    pub fn from_bytes(key: [u8; 32]) -> SwarmSecret {
        SwarmSecret(key)
    }

    /// Read the secret at `path`, or create one there (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<(SwarmSecret, bool), SecretError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes =
                    unhex(text.trim())
                        .filter(|b| b.len() == 32)
                        .ok_or(SecretError::Malformed {
                            path: shown.clone(),
                        })?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok((SwarmSecret(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = SwarmSecret::generate()?;
                secret.save(path)?;
                Ok((secret, true))
            }
            Err(source) => Err(SecretError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// Write the secret to `path`, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let shown = path.display().to_string();
        crate::private_file::write_private(path, &format!("{}\n", hex(&self.0))).map_err(|source| {
            SecretError::Write {
                path: shown,
                source,
            }
        })
    }

    fn derive(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"myco:");
        h.update(label.as_bytes());
        h.update(b":");
        h.update(self.0);
        h.finalize().into()
    }

    /// The ractor_cluster cookie.
    pub fn cookie(&self) -> String {
        hex(&self.derive("cookie"))
    }

    /// A public fingerprint of the swarm: safe to broadcast, impossible to invert.
    pub fn swarm_id(&self) -> String {
        hex(&self.derive("swarm-id")[..8])
    }

    /// `myco1:<secret hex>@host:port,host:port`: the secret plus where to join.
    pub fn invite_token(&self, addrs: &[String]) -> String {
        format!("{TOKEN_PREFIX}:{}@{}", hex(&self.0), addrs.join(","))
    }

    /// Parse an invite token into the secret and the addresses to dial.
    pub fn parse_token(token: &str) -> Result<(SwarmSecret, Vec<String>), SecretError> {
        let rest = token
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.strip_prefix(':'))
            .ok_or(SecretError::BadToken("it does not start with `myco1:`"))?;
        let (key, addrs) = rest.split_once('@').unwrap_or((rest, ""));
        let bytes = unhex(key)
            .filter(|b| b.len() == 32)
            .ok_or(SecretError::BadToken("its key is not 64 hex digits"))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        let addrs = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        Ok((SwarmSecret(k), addrs))
    }

    /// The swarm's certificate authority: its key is derived from the secret, so every
    /// member builds the same one.
    fn authority(
        &self,
    ) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), SecretError> {
        // PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410).
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&self.derive("tls-ca"));
        let der = PrivatePkcs8KeyDer::from(pkcs8);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519)
            .map_err(|e| SecretError::Tls(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| SecretError::Tls(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("myco swarm {}", self.swarm_id()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        let cert = params
            .self_signed(&key)
            .map_err(|e| SecretError::Tls(e.to_string()))?;
        Ok((cert.der().clone(), Issuer::new(params, key)))
    }

    /// TLS for this node: a fresh node key and certificate signed by the swarm's authority,
    /// used both to accept (requiring a client certificate from the same authority) and to
    /// dial.
    pub fn tls(&self) -> Result<SwarmTls, SecretError> {
        let tls_err = |e: &dyn std::fmt::Display| SecretError::Tls(e.to_string());
        let (ca_der, issuer) = self.authority()?;
        let node_key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| tls_err(&e))?;
        let mut params =
            CertificateParams::new(vec![TLS_SERVER_NAME.to_owned()]).map_err(|e| tls_err(&e))?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "myco node");
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let node_cert = params
            .signed_by(&node_key, &issuer)
            .map_err(|e| tls_err(&e))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node_key.serialize_der()));
        let chain = vec![node_cert.der().clone()];

        let mut roots = RootCertStore::empty();
        roots.add(ca_der).map_err(|e| tls_err(&e))?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_err(&e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(|e| tls_err(&e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| tls_err(&e))?;
        Ok(SwarmTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

/// A node's TLS ends, both requiring the swarm's authority.
#[derive(Clone)]
pub struct SwarmTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for SwarmTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwarmTls")
    }
}

impl SwarmTls {
    /// The name servers are verified against.
    pub fn server_name() -> Result<ServerName<'static>, SecretError> {
        ServerName::try_from(TLS_SERVER_NAME).map_err(|e| SecretError::Tls(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let s = SwarmSecret::generate().unwrap();
        let token = s.invite_token(&["10.0.0.2:7701".into(), "host:1".into()]);
        let (back, addrs) = SwarmSecret::parse_token(&token).unwrap();
        assert_eq!(back, s);
        assert_eq!(addrs, ["10.0.0.2:7701", "host:1"]);
        assert!(SwarmSecret::parse_token("myco1:zz@x").is_err());
        assert!(SwarmSecret::parse_token("hello").is_err());
    }

    #[test]
    fn derived_values_are_stable_and_distinct() {
        let a = SwarmSecret::from_bytes([1; 32]);
        let b = SwarmSecret::from_bytes([2; 32]);
        assert_eq!(a.cookie(), SwarmSecret::from_bytes([1; 32]).cookie());
        assert_ne!(a.cookie(), b.cookie());
        assert_ne!(a.swarm_id(), b.swarm_id());
        assert_eq!(a.swarm_id().len(), 16);
    }

    #[test]
    fn secret_file_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let (a, created) = SwarmSecret::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = SwarmSecret::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        std::fs::write(&path, "nope").unwrap();
        let e = SwarmSecret::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    /// Handshake between two nodes' TLS ends; Ok if both sides accept each other.
    async fn handshake(server: &SwarmTls, client: &SwarmTls) -> Result<(), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor.clone();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor
                .accept(tcp)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let dialed = client
            .connector
            .connect(SwarmTls::server_name().unwrap(), tcp)
            .await
            .map(|mut s| {
                // TLS 1.3 client auth is checked by the server after the client finishes;
                // a round trip surfaces its verdict.
                let _ = &mut s;
            })
            .map_err(|e| e.to_string());
        let accepted = accept.await.unwrap();
        dialed.and(accepted)
    }

    #[tokio::test]
    async fn same_secret_handshakes_and_other_secrets_are_refused() {
        let a1 = SwarmSecret::from_bytes([7; 32]).tls().unwrap();
        let a2 = SwarmSecret::from_bytes([7; 32]).tls().unwrap();
        let b = SwarmSecret::from_bytes([8; 32]).tls().unwrap();
        handshake(&a1, &a2).await.unwrap();
        let e = handshake(&a1, &b).await.unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        let e = handshake(&b, &a1).await.unwrap_err();
        assert!(e.contains("certificate"), "{e}");
    }
}
