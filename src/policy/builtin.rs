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

fn write(
    dir: &Path,
    packs: &[&super::packs::Pack],
    overwrite: bool,
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let pack_files = packs.iter().flat_map(|p| p.files.iter());
    for (name, text) in FILES.iter().chain(pack_files) {
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

/// Writes the built-in set, and the files of `packs` beside it, into `dir`, refusing to
/// overwrite any file. Returns the files.
pub fn export(dir: &Path, packs: &[&super::packs::Pack]) -> Result<Vec<PathBuf>, String> {
    let pack_files = packs.iter().flat_map(|p| p.files.iter());
    if let Some((name, _)) = FILES
        .iter()
        .chain(pack_files)
        .find(|(name, _)| dir.join(name).exists())
    {
        return Err(format!(
            "{} exists; export into an empty or new directory",
            dir.join(name).display()
        ));
    }
    write(dir, packs, false)
}

/// Writes the built-in set into `dir` (under the data directory), replacing what a previous
/// start wrote there, so that it loads like any other directory.
pub fn materialize(dir: &Path) -> Result<(), String> {
    write(dir, &[], true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_is_the_shipped_directory() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let files = export(temp.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(files.len(), FILES.len());
        let built_in = crate::policy::load(temp.path()).unwrap_or_else(|e| panic!("{e}"));
        let on_disk = crate::policy::load(&shipped).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(built_in.version(), on_disk.version());
        assert!(export(temp.path(), &[]).is_err(), "export never overwrites");
    }

    #[test]
    fn a_pack_exported_loads_as_the_same_pack_enabled_by_name() {
        let labels = crate::policy::packs::find("labels").unwrap_or_else(|e| panic!("{e}"));
        let exported = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let files = export(exported.path(), &[labels]).unwrap_or_else(|e| panic!("{e}"));
        assert!(files.contains(&exported.path().join("labels.cedar")));
        assert!(files.contains(&exported.path().join("tests/labels.yaml")));
        let named = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        export(named.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(named.path().join("packs.toml"), "packs = [\"labels\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let exported = crate::policy::load(exported.path()).unwrap_or_else(|e| panic!("{e}"));
        let named = crate::policy::load(named.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exported.version(), named.version());
        let ids: Vec<_> = named.rules().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "C1", "E3", "L1", "L2", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"
            ]
        );
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let off = crate::policy::load(&shipped).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(off.version(), named.version());
    }
}
