//! Backups on etcd: the state at one revision (the view, once caught up), and writing a
//! backup's state into an empty prefix.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{EtcdBackend, MAX_TXN_OPS};
use crate::domain::LogRecord;
use crate::error::PdpError;

impl EtcdBackend {
    /// Every state key and value, consistent at the revision returned: the view after it has
    /// caught up with everything committed before this call (the watch applies a revision's
    /// events together, so the mirror is never half a commit).
    pub async fn state(
        &self,
        within: std::time::Duration,
    ) -> Result<(u64, Vec<(String, Vec<u8>)>), PdpError> {
        self.catch_up(within).await?;
        let mirror = self.mirror();
        let entries = mirror
            .kv
            .iter()
            .map(|(key, (value, _))| (key.clone(), value.clone()))
            .collect();
        Ok((mirror.revision.max(0) as u64, entries))
    }

    /// How many state keys the view holds.
    pub fn state_len(&self) -> usize {
        self.mirror().kv.len()
    }

    /// Writes `entries`, and `log` as records for every replica's decision log, into the
    /// prefix, in transactions of at most `MAX_TXN_OPS` keys, each guarded on its keys being
    /// absent: a restore never overwrites. Returns the last revision written.
    pub async fn put_state(
        &self,
        entries: &[(String, Vec<u8>)],
        log: &[LogRecord],
    ) -> Result<u64, PdpError> {
        let mut keyed: Vec<(String, Vec<u8>)> = entries.to_vec();
        for record in log {
            keyed.push((
                format!("log/{}", record.id),
                crate::store::tx::encode(&record.id, record)?,
            ));
        }
        let mut revision = 0;
        for chunk in keyed.chunks(MAX_TXN_OPS / 2) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|(key, _)| Compare::create_revision(self.key(key), CompareOp::Equal, 0))
                .collect();
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, value)| TxnOp::put(self.key(key), value.clone(), None))
                .collect();
            let response = self.send(Txn::new().when(compares).and_then(puts)).await?;
            if !response.succeeded() {
                return Err(PdpError::FailedPrecondition(format!(
                    "etcd prefix {:?} is not empty: a restore writes only into an empty one",
                    self.options.prefix
                )));
            }
            revision = response.header().map_or(0, |h| h.revision()).max(0) as u64;
        }
        Ok(revision)
    }
}
