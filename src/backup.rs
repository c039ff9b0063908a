//! `anchor-pdp backup` and `anchor-pdp restore`: the operator's side of `store::backup`.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::{BackupArgs, ServeArgs, StoreKind};
use crate::proto;
use crate::store::{Backup, Store};

/// Asks the server at `--server` for a backup and writes it to `--to` (through a temporary
/// file, fsynced, then renamed: the file is whole or absent). Returns a summary for the
/// operator.
pub async fn backup_to(args: &BackupArgs) -> Result<String, String> {
    let (server, to) = (&args.server, &args.to);
    let channel = endpoint(args)?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    let mut admin = proto::policy_admin_client::PolicyAdminClient::new(channel)
        .max_decoding_message_size(8 << 20);
    let mut request = tonic::Request::new(proto::BackupRequest {
        with_decision_log: args.with_decision_log,
    });
    if let Some(token) = &args.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "ANCHOR_PDP_TOKEN is not a valid header value".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut stream = admin
        .backup(request)
        .await
        .map_err(|e| format!("backup refused: {}", e.message()))?
        .into_inner();
    let mut bytes = Vec::new();
    let mut revision = 0;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|e| format!("backup interrupted: {}", e.message()))?
    {
        revision = chunk.store_revision;
        bytes.extend_from_slice(&chunk.data);
    }
    // What arrived is checked as a restore would check it, before it is kept.
    let backup = Backup::decode(&bytes).map_err(|e| format!("the backup received: {e}"))?;
    write_whole(to, &bytes).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    Ok(format!(
        "{}: backup of a {} store at revision {revision}: {} keys, {} decision-log records, \
         {} bytes",
        to.display(),
        backup.header.backend,
        backup.header.keys,
        backup.header.log_records,
        bytes.len()
    ))
}

/// The server's address, with TLS when it is `https://` (or a CA or certificate is given).
fn endpoint(args: &BackupArgs) -> Result<tonic::transport::Endpoint, String> {
    let server = &args.server;
    let endpoint = tonic::transport::Endpoint::from_shared(server.clone())
        .map_err(|e| format!("--server {server}: {e}"))?;
    let tls = server.starts_with("https://") || args.ca.is_some() || args.cert.is_some();
    if !tls {
        return Ok(endpoint);
    }
    if !server.starts_with("https://") {
        return Err(format!(
            "--server {server}: --ca and --cert need an https:// server"
        ));
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut config = ClientTlsConfig::new();
    match &args.ca {
        Some(ca) => config = config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => {
            return Err(format!(
                "--server {server}: give the CA that signed its certificate (--ca)"
            ));
        }
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| format!("--server {server}: TLS: {e}"))
}

fn write_whole(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let partial = to.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, to)?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Restores the backup in `from` into the store `args` select (`--data-dir` for sled;
/// `--store etcd` with its endpoints and prefix), which must be empty and not in use. Checks
/// the whole file before writing anything. Returns a summary for the operator.
pub async fn restore_from(from: &Path, args: &ServeArgs) -> Result<String, String> {
    let bytes = std::fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let backup = Backup::decode(&bytes).map_err(|e| format!("{}: {e}", from.display()))?;
    let segment_bytes = args.decision_log_segment_mib << 20;
    let (store, target) = match args.store {
        StoreKind::Sled => (
            Store::open_with(&args.data_dir, segment_bytes, args.disk_options())
                .map_err(|e| e.to_string())?,
            format!("sled store in {}", args.data_dir.display()),
        ),
        StoreKind::Etcd => {
            // The records go to etcd for every replica to copy; this process keeps none.
            let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
            let store = Store::open_etcd(
                scratch.path(),
                segment_bytes,
                args.disk_options(),
                args.etcd_options(),
            )
            .await
            .map_err(|e| e.to_string())?;
            (
                store,
                format!(
                    "etcd prefix {:?} at {}",
                    args.etcd_prefix,
                    args.etcd_endpoints.join(",")
                ),
            )
        }
    };
    let resumed = store.restore(&backup).await.map_err(|e| e.to_string())?;
    store.flush_blocking().map_err(|e| e.to_string())?;
    Ok(format!(
        "{}restored {} keys and {} decision-log records (a {} backup at revision {}) into the {target}",
        if resumed {
            "an unfinished restore resumed: "
        } else {
            ""
        },
        backup.header.keys,
        backup.header.log_records,
        backup.header.backend,
        backup.header.revision
    ))
}
