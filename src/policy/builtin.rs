//! The shipped policy set, built into the binary: `serve` uses it when there is no
//! `./policies` directory (after `cargo install`, or from any other directory), and
//! `anchor-pdp policy export DIR` writes it out for editing.

use std::path::{Path, PathBuf};

/// What `--policies` defaults to; when it is missing, the built-in set serves.
pub const DEFAULT_DIR: &str = "./policies";

/// Every file of the shipped set, by its path under the policy directory.
pub const FILES: &[(&str, &str)] = &[
    (
        "anchor.cedarschema",
        include_str!("../../policies/anchor.cedarschema"),
    ),
    ("rules.cedar", include_str!("../../policies/rules.cedar")),
    (
        "tests/admission.yaml",
        include_str!("../../policies/tests/admission.yaml"),
    ),
    (
        "tests/broadcast.yaml",
        include_str!("../../policies/tests/broadcast.yaml"),
    ),
    (
        "tests/enforcement.yaml",
        include_str!("../../policies/tests/enforcement.yaml"),
    ),
];

fn write(dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (name, text) in FILES {
        let path = dir.join(name);
        if !overwrite && path.exists() {
            return Err(format!(
                "{} exists; export into an empty or new directory",
                path.display()
            ));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the built-in set into `dir`, refusing to overwrite any file. Returns the files.
pub fn export(dir: &Path) -> Result<Vec<PathBuf>, String> {
    if let Some((name, _)) = FILES.iter().find(|(name, _)| dir.join(name).exists()) {
        return Err(format!(
            "{} exists; export into an empty or new directory",
            dir.join(name).display()
        ));
    }
    write(dir, false)
}

/// Writes the built-in set into `dir` (under the data directory), replacing what a previous
/// start wrote there, so that it loads like any other directory.
pub fn materialize(dir: &Path) -> Result<(), String> {
    write(dir, true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_is_the_shipped_directory() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let files = export(temp.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), FILES.len());
        let built_in = crate::policy::load(temp.path()).unwrap_or_else(|e| panic!("{e}"));
        let on_disk = crate::policy::load(&shipped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(built_in.version(), on_disk.version());
        assert!(export(temp.path()).is_err(), "export never overwrites");
    }
}
