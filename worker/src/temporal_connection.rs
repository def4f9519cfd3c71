//! Connecting to Temporal, plain or secured: TLS with a custom CA and server name, mutual TLS,
//! and API keys, from [`TemporalTls`]. A secured connection that fails says which setting is
//! the likely cause, since TLS errors name a certificate, not the variable that chose it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use temporalio_client::{ClientTlsOptions, Connection, ConnectionOptions, TlsOptions};

use crate::config::{TemporalSettings, TemporalTls};

/// How long connecting (including the first call) may take before it is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `settings.address`, with TLS and an API key when configured.
pub(crate) async fn connect(settings: &TemporalSettings) -> anyhow::Result<Connection> {
    let tls = &settings.tls;
    let scheme = if tls.in_use() { "https" } else { "http" };
    let url = url::Url::parse(&format!("{scheme}://{}", settings.address))
        .with_context(|| format!("TEMPORAL_ADDRESS {:?} is not host:port", settings.address))?;
    let options = ConnectionOptions::new(url)
        .identity(format!("orders@{}", std::process::id()))
        .connect_timeout(CONNECT_TIMEOUT)
        .maybe_tls_options(tls_options(tls)?)
        .maybe_api_key(tls.api_key.clone())
        .build();
    Connection::connect(options).await.map_err(|e| {
        let detail = format!("{e:?}");
        anyhow::Error::new(e).context(connect_failure(settings, &detail))
    })
}

/// The TLS options `tls` asks for, with each file read up front so that a wrong path is
/// named as such.
fn tls_options(tls: &TemporalTls) -> anyhow::Result<Option<TlsOptions>> {
    if !tls.in_use() {
        return Ok(None);
    }
    let client = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(
            ClientTlsOptions::builder()
                .client_cert(read_pem(cert, "TEMPORAL_TLS_CLIENT_CERT_PATH")?)
                .client_private_key(read_pem(key, "TEMPORAL_TLS_CLIENT_KEY_PATH")?)
                .build(),
        ),
        (None, None) => None,
        (Some(_), None) => anyhow::bail!(
            "TEMPORAL_TLS_CLIENT_CERT_PATH is set but TEMPORAL_TLS_CLIENT_KEY_PATH is not: mutual TLS needs both"
        ),
        (None, Some(_)) => anyhow::bail!(
            "TEMPORAL_TLS_CLIENT_KEY_PATH is set but TEMPORAL_TLS_CLIENT_CERT_PATH is not: mutual TLS needs both"
        ),
    };
    let server_ca = tls
        .server_ca
        .as_deref()
        .map(|path| read_pem(path, "TEMPORAL_TLS_SERVER_CA_CERT_PATH"))
        .transpose()?;
    Ok(Some(
        TlsOptions::builder()
            .maybe_server_root_ca_cert(server_ca)
            .maybe_domain(tls.server_name.clone())
            .maybe_client_tls_options(client)
            .build(),
    ))
}

fn read_pem(path: &Path, variable: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {variable} {}", path.display()))?;
    anyhow::ensure!(
        bytes.starts_with(b"-----BEGIN"),
        "{variable} {} is not a PEM file",
        path.display()
    );
    Ok(bytes)
}

/// What to say when connecting failed: the setting the error points at, and what to do
/// about it. The underlying error follows as the cause.
fn connect_failure(settings: &TemporalSettings, error: &str) -> String {
    let address = &settings.address;
    let tls = &settings.tls;
    if !tls.in_use() {
        return format!(
            "cannot reach Temporal at {address} (is it running? `orders dev` starts one; if it is served over TLS, set TEMPORAL_TLS=true)"
        );
    }
    let cause = if error.contains("UnknownIssuer") {
        match &tls.server_ca {
            Some(ca) => format!(
                "the server's certificate is not signed by TEMPORAL_TLS_SERVER_CA_CERT_PATH ({}): point it at the CA that signed the server's certificate",
                ca.display()
            ),
            None => "the server's certificate is not signed by a CA this system trusts: set TEMPORAL_TLS_SERVER_CA_CERT_PATH to the CA that signed it".to_owned(),
        }
    } else if error.contains("NotValidForName") {
        match &tls.server_name {
            Some(name) => format!(
                "the server's certificate is not issued for TEMPORAL_TLS_SERVER_NAME ({name}): set it to a name the certificate carries"
            ),
            None => format!(
                "the server's certificate is not issued for {address}'s host: set TEMPORAL_TLS_SERVER_NAME to a name the certificate carries"
            ),
        }
    } else if error.contains("400 Bad Request") || error.contains("CertificateRequired") {
        if tls.client_cert.is_some() {
            "the server refused the client certificate TEMPORAL_TLS_CLIENT_CERT_PATH: use one signed by a CA the server trusts".to_owned()
        } else {
            "the server requires a client certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH".to_owned()
        }
    } else if error.contains("401 Unauthorized")
        || error.contains("Unauthenticated")
        || error.contains("PermissionDenied")
    {
        if tls.api_key.is_some() {
            "the server refused TEMPORAL_API_KEY: check the key and that it may use this namespace"
                .to_owned()
        } else {
            "the server requires an API key: set TEMPORAL_API_KEY".to_owned()
        }
    } else if error.contains("InvalidContentType") || error.contains("CorruptMessage") {
        "the server does not speak TLS at this address: unset TEMPORAL_TLS and the other TLS settings, or use its TLS port".to_owned()
    } else {
        "is it running, and served over TLS at this address?".to_owned()
    };
    format!("cannot connect to Temporal at {address} over TLS: {cause}")
}
