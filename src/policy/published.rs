//! A policy set as one value, for publishing through the replicated store: every `*.cedar`
//! and `*.cedarschema` file of a directory, and its `packs.toml`, by name. A replica unpacks a published set into a
//! directory of its own and loads it from there as from any other, so the version (a hash of
//! names and texts) is the same on every replica.

use std::collections::BTreeMap;
use std::path::Path;

fn is_policy_file(name: &str) -> bool {
    !name.contains(['/', '\\'])
        && !name.starts_with('.')
        && (name.ends_with(".cedar")
            || name.ends_with(".cedarschema")
            || name == super::packs::KEY_FILE)
}

/// The policy files of `dir`, as published bytes.
pub fn pack(dir: &Path) -> Result<Vec<u8>, String> {
    let mut files = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_policy_file(&name) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
        files.insert(name, text);
    }
    serde_json::to_vec(&files).map_err(|e| format!("cannot encode the policy set: {e}"))
}

/// Writes a published set into `dir`, replacing the policy files there.
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<(), String> {
    let files: BTreeMap<String, String> = serde_json::from_slice(bytes)
        .map_err(|e| format!("the published policy set does not decode: {e}"))?;
    if let Some(bad) = files.keys().find(|name| !is_policy_file(name)) {
        return Err(format!(
            "the published policy set names a file {bad:?} that is not a policy file"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for entry in
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?
    {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if is_policy_file(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    for (name, text) in files {
        let path = dir.join(&name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_set_unpacks_to_the_same_version_and_refuses_other_paths() {
        let copy = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let bytes = pack(&shipped).unwrap_or_else(|e| panic!("{e}"));
        unpack(&bytes, copy.path()).unwrap_or_else(|e| panic!("{e}"));
        let original = crate::policy::load(&shipped).unwrap_or_else(|e| panic!("{e}"));
        let unpacked = crate::policy::load(copy.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(original.version(), unpacked.version());
        let hostile = br#"{"../escape.cedar": "permit(principal, action, resource);"}"#;
        assert!(unpack(hostile, copy.path()).is_err());
        assert!(!copy.path().join("../escape.cedar").exists());
    }
}
