//! Connecting to PostgreSQL from a libpq-style URL, with TLS through rustls.
//!
//! tokio-postgres only understands `sslmode=disable|prefer|require` and never verifies
//! certificates by itself, so the libpq TLS parameters (`sslmode` incl. `verify-ca` and
//! `verify-full`, `sslrootcert`) are taken out of the URL here and turned into a rustls config.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, CancelToken, Client, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, ConnectError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnectError::Config(format!(
                    "unsupported sslmode {other:?}"
                )))
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Never carries the URL itself: it holds the password.
    #[error("invalid database URL: {0}")]
    Config(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not connect to the database: {message}")]
    Connect {
        sqlstate: Option<String>,
        message: String,
    },
}

/// Replaces secrets (the URL, the password, plain and percent-encoded) with `***` in any text
/// that leaves the process: reports, logs, server notices.
#[derive(Clone, Default)]
pub struct Scrubber(Arc<Vec<String>>);

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} secrets)", self.0.len())
    }
}

impl Scrubber {
    pub fn new(mut secrets: Vec<String>) -> Scrubber {
        // Longest first, so the URL goes as a whole before the password inside it.
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Scrubber(Arc::new(secrets))
    }

    /// For a URL that may not even parse: everything we can tell is secret.
    pub fn for_url(url: &str) -> Scrubber {
        Scrubber::new(
            parse(url)
                .map(|s| s.secrets(url))
                .unwrap_or_else(|_| vec![url.to_string()]),
        )
    }

    /// [`Scrubber::for_url`] of several URLs at once.
    pub fn for_urls(urls: &[&str]) -> Scrubber {
        Scrubber::new(
            urls.iter()
                .flat_map(|u| Scrubber::for_url(u).0.iter().cloned().collect::<Vec<_>>())
                .collect(),
        )
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.0.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// Parsed connection settings. `Debug` is deliberately not derived: the config holds the password.
pub struct ConnSettings {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_cert: Option<String>,
}

impl ConnSettings {
    /// Strings that must never appear in any output (the password, the whole URL).
    pub fn secrets(&self, url: &str) -> Vec<String> {
        let mut out = vec![url.to_string()];
        if let Some(pw) = self.config.get_password() {
            let pw = String::from_utf8_lossy(pw).to_string();
            if !pw.is_empty() {
                out.push(percent_encode_min(&pw));
                out.push(pw);
            }
        }
        out.retain(|s| s.len() >= 3);
        out
    }
}

/// Splits the libpq TLS parameters out of a URL or key=value connection string.
pub fn parse(url: &str) -> Result<ConnSettings, ConnectError> {
    let mut ssl_mode: Option<SslMode> = None;
    let mut root_cert: Option<String> = None;
    let url = url.trim();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    match k {
                        "sslmode" => ssl_mode = Some(SslMode::parse(&percent_decode(v))?),
                        "sslrootcert" => root_cert = Some(percent_decode(v)),
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // key=value form; values with spaces must be quoted, which we keep as is.
        let mut kept = Vec::new();
        for tok in url.split_whitespace() {
            match tok.split_once('=') {
                Some(("sslmode", v)) => ssl_mode = Some(SslMode::parse(v.trim_matches('\''))?),
                Some(("sslrootcert", v)) => root_cert = Some(v.trim_matches('\'').to_string()),
                _ => kept.push(tok),
            }
        }
        kept.join(" ")
    };
    let ssl_mode = match ssl_mode {
        Some(m) => m,
        None => match std::env::var("PGSSLMODE") {
            Ok(v) if !v.is_empty() => SslMode::parse(&v)?,
            _ => SslMode::Prefer,
        },
    };
    let root_cert = root_cert.or_else(|| {
        std::env::var("PGSSLROOTCERT")
            .ok()
            .filter(|v| !v.is_empty())
    });
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(config_error)?;
    config.ssl_mode(match ssl_mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    if config.get_application_name().is_none() {
        config.application_name("phasegate");
    }
    Ok(ConnSettings {
        config,
        ssl_mode,
        root_cert,
    })
}

/// tokio-postgres' parse error with its cause, which names the offending key (never the
/// value): its own `Display` stops at "invalid connection string".
fn config_error(e: tokio_postgres::Error) -> ConnectError {
    use std::error::Error as _;
    let mut msg = e.to_string();
    if let Some(cause) = e.source() {
        msg = format!("{msg}: {cause}");
        if cause.to_string().starts_with("unknown option") {
            msg.push_str(
                " (the executor takes tokio-postgres' connection parameters plus sslmode and \
                 sslrootcert; docs/executor.md)",
            );
        }
    }
    ConnectError::Config(msg)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn percent_encode_min(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connects and spawns the connection task, which logs server notices through `scrub`.
pub async fn connect(
    settings: &ConnSettings,
    timeout: Duration,
    scrub: &Scrubber,
) -> Result<Client, ConnectError> {
    let mut config = settings.config.clone();
    if !timeout.is_zero() {
        config.connect_timeout(timeout);
    }
    let connect_err = |e: tokio_postgres::Error| {
        let (sqlstate, message) = describe(&e);
        ConnectError::Connect { sqlstate, message }
    };
    if settings.ssl_mode == SslMode::Disable {
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(connect_err)?;
        drive(conn, scrub.clone());
        return Ok(client);
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(settings)?);
    let (client, conn) = config.connect(tls).await.map_err(connect_err)?;
    drive(conn, scrub.clone());
    Ok(client)
}

/// Runs the connection. Awaiting a `Connection` would log notices itself, unscrubbed (through
/// the `log` crate); polling its messages lets us scrub them first.
fn drive<S, T>(mut conn: Connection<S, T>, scrub: Scrubber)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match futures::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => log_notice(&n, &scrub),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %scrub.scrub(&e.to_string()), "database connection closed");
                    return;
                }
                None => return,
            }
        }
    });
}

/// A server NOTICE, WARNING, INFO or LOG message (e.g. from `RAISE NOTICE` in the phase's SQL).
fn log_notice(n: &DbError, scrub: &Scrubber) {
    let mut text = format!("{}: {}", n.severity(), n.message());
    if let Some(d) = n.detail() {
        text.push_str(&format!(" DETAIL: {d}"));
    }
    if let Some(h) = n.hint() {
        text.push_str(&format!(" HINT: {h}"));
    }
    let text = scrub.scrub(&text);
    let sqlstate = n.code().code();
    if n.severity() == "WARNING" {
        tracing::warn!(sqlstate, "{text}");
    } else {
        tracing::info!(sqlstate, "{text}");
    }
}

/// Asks the server to cancel the statement running on the connection of `token` (a separate,
/// short connection, with the same TLS settings).
pub async fn cancel(settings: &ConnSettings, token: &CancelToken) -> Result<(), ConnectError> {
    let err = |e: tokio_postgres::Error| {
        let (sqlstate, message) = describe(&e);
        ConnectError::Connect { sqlstate, message }
    };
    if settings.ssl_mode == SslMode::Disable {
        return token.cancel_query(tokio_postgres::NoTls).await.map_err(err);
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(settings)?);
    token.cancel_query(tls).await.map_err(err)
}

/// SQLSTATE and message of a tokio-postgres error, including its source chain.
pub fn describe(e: &tokio_postgres::Error) -> (Option<String>, String) {
    if let Some(db) = e.as_db_error() {
        let mut msg = db.message().to_string();
        if let Some(d) = db.detail() {
            msg.push_str(&format!(" DETAIL: {d}"));
        }
        if let Some(h) = db.hint() {
            msg.push_str(&format!(" HINT: {h}"));
        }
        return (Some(db.code().code().to_string()), msg);
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    (e.code().map(|c| c.code().to_string()), msg)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(settings: &ConnSettings) -> Result<rustls::ClientConfig, ConnectError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let verify = matches!(settings.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if !verify {
        // libpq semantics: require/prefer encrypt but do not authenticate the server.
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &settings.root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectError::Tls(format!("cannot read sslrootcert {path}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    ConnectError::Tls(format!("bad certificate in sslrootcert {path}: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    ConnectError::Tls(format!("bad certificate in sslrootcert {path}: {e}"))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(ConnectError::Tls(
            "no trusted root certificates for sslmode=verify-ca/verify-full: set sslrootcert"
                .into(),
        ));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if settings.ssl_mode == SslMode::VerifyCa {
        Arc::new(VerifyCaOnly(webpki))
    } else {
        webpki
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `sslmode=require`: encryption without server authentication (as libpq does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct VerifyCaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyCaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tls_params_from_urls() {
        let s = parse("postgres://u:p%40ss@db.example:5433/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(s.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(s.config.get_dbname(), Some("app"));
        let secrets = s.secrets("postgres://u:p%40ss@x");
        assert!(secrets.contains(&"p@ss".to_string()));
        assert!(secrets.contains(&"p%40ss".to_string()));

        let s = parse("host=localhost user=u password=pw sslmode=require")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.ssl_mode, SslMode::Require);
        assert_eq!(s.config.get_application_name(), Some("phasegate"));
    }

    #[test]
    fn scrubber_replaces_url_and_password() {
        let url = "postgres://u:p%40ss@h/db";
        let s = Scrubber::for_url(url);
        assert_eq!(
            s.scrub(&format!("a {url} b p@ss c p%40ss")),
            "a *** b *** c ***"
        );
        assert_eq!(Scrubber::for_url("::bad::").scrub("x ::bad:: y"), "x *** y");
    }

    #[test]
    fn bad_urls_do_not_echo_the_password() {
        let err = parse("postgres://u:hunter2@h/db?sslmode=bogus")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("sslmode"), "{err}");
        assert!(!err.contains("hunter2"));
        let err = parse("postgres://u:hunter2@h:notaport/db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_url_parameters_are_named() {
        for url in [
            "postgres://u:hunter2@h/db?sslmode=disable&statement_timout=5",
            "host=h user=u password=hunter2 statement_timout=5",
        ] {
            let err = parse(url).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("statement_timout"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
