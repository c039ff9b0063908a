//! Backups on etcd: the state at one revision (the view, once caught up), and writing a
//! backup's state into an empty prefix.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{EtcdBackend, MAX_TXN_OPS, RESTORING_KEY};
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
    /// prefix, in transactions of at most `MAX_TXN_OPS` keys. A state key is written only if
    /// absent (guarded); one the view already holds with the same value (an earlier attempt of
    /// the same restore wrote it) is left, and one with another value refuses the restore. A
    /// record is the same whoever writes it (its id names it), so records are written as they
    /// are. Returns the last revision written.
    pub async fn put_state(
        &self,
        entries: &[(String, Vec<u8>)],
        log: &[LogRecord],
    ) -> Result<u64, PdpError> {
        let mut keyed: Vec<(String, Vec<u8>, bool)> = Vec::with_capacity(entries.len());
        {
            let mirror = self.mirror();
            for (key, value) in entries {
                match mirror.kv.get(key) {
                    Some((held, _)) if held == value => {}
                    Some(_) => {
                        return Err(PdpError::FailedPrecondition(format!(
                            "etcd prefix {:?} holds {key} with another value: a restore \
                             writes only into an empty prefix",
                            self.options.prefix
                        )));
                    }
                    None => keyed.push((key.clone(), value.clone(), true)),
                }
            }
        }
        for record in log {
            keyed.push((
                format!("log/{}", record.id),
                crate::store::tx::encode(&record.id, record)?,
                false,
            ));
        }
        let mut revision = 0;
        for chunk in keyed.chunks(MAX_TXN_OPS / 2) {
            let compares: Vec<Compare> = chunk
                .iter()
                .filter(|(_, _, guarded)| *guarded)
                .map(|(key, _, _)| Compare::create_revision(self.key(key), CompareOp::Equal, 0))
                .collect();
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, value, _)| TxnOp::put(self.key(key), value.clone(), None))
                .collect();
            let response = self.send(Txn::new().when(compares).and_then(puts)).await?;
            if !response.succeeded() {
                return Err(PdpError::FailedPrecondition(format!(
                    "etcd prefix {:?} is not empty: a restore writes only into an empty one",
                    self.options.prefix
                )));
            }
            revision = response.header().map_or(0, |h| h.revision()).max(0) as u64;
            crate::store::fault::restore_written(chunk.len());
        }
        Ok(revision)
    }

    /// The marker of a restore that has begun and not finished (see `Store::restore`), read
    /// from etcd itself (it is not state, so the view does not hold it).
    pub async fn restore_marker(&self) -> Result<Option<Vec<u8>>, PdpError> {
        let found = self
            .read_key("reading the restore marker", RESTORING_KEY)
            .await?;
        Ok(found.map(|(value, _)| value))
    }

    /// Sets (or, with `None`, removes) the restore marker.
    pub async fn set_restore_marker(&self, marker: Option<Vec<u8>>) -> Result<(), PdpError> {
        let key = self.key(RESTORING_KEY);
        let op = match marker {
            Some(marker) => TxnOp::put(key, marker, None),
            None => TxnOp::delete(key, None),
        };
        self.send(Txn::new().and_then(vec![op])).await?;
        Ok(())
    }
}
