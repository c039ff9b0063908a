//! Rule packs: sets of rules shipped with the binary but off unless a policy directory asks
//! for them, so the platform's own rules decide exactly as before by default. A directory
//! enables a pack with `packs = ["labels"]` in its `packs.toml`, which loads the pack as the
//! binary ships it; `anchor-pdp policy export --with labels` writes the pack's files into the
//! directory instead, to be edited like the rest.

use std::path::{Path, PathBuf};

use super::load::{PolicyProblem, line_col};

/// The file in a policy directory that names the packs it enables.
pub const KEY_FILE: &str = "packs.toml";

/// A pack as the binary ships it: its files by their path under a policy directory.
#[derive(Debug)]
pub struct Pack {
    pub name: &'static str,
    pub summary: &'static str,
    pub files: &'static [(&'static str, &'static str)],
    /// What the pack's rules read that a schema written before the pack lacks.
    pub schema_needs: &'static [&'static str],
}

impl Pack {
    /// The pack's policy files (`*.cedar`), by name.
    pub fn policies(&self) -> impl Iterator<Item = &(&'static str, &'static str)> {
        self.files
            .iter()
            .filter(|(name, _)| name.ends_with(".cedar"))
    }

    /// The pack's test suites, by path under the policy directory.
    pub fn suites(&self) -> impl Iterator<Item = &(&'static str, &'static str)> {
        self.files
            .iter()
            .filter(|(name, _)| name.starts_with("tests/"))
    }
}

/// Every pack the binary ships.
pub const PACKS: &[Pack] = &[Pack {
    name: "labels",
    summary: "AI-content labels (L1 explicit, L2 implicit) and likeness consent (C1), \
              per China's 2025 labelling measures, the 2026 live e-commerce measures, the deep \
              synthesis provisions and EU AI Act Art. 50",
    files: &[
        (
            "labels.cedar",
            include_str!("../../policies/packs/labels/labels.cedar"),
        ),
        (
            "tests/labels.yaml",
            include_str!("../../policies/packs/labels/tests/labels.yaml"),
        ),
    ],
    schema_needs: &[
        "\"label_shown\"",
        "\"implicit_label\"",
        "\"likeness_of\"",
        "entity Consent",
    ],
}];

/// Why `schema` (the directory's schema files' text) cannot hold `pack`'s rules, if it
/// cannot: a schema exported by an anchor-pdp from before the pack. Said at the key file, so
/// the fix is plain rather than a Cedar error inside the pack.
pub fn schema_gap(pack: &Pack, schema: &str) -> Option<String> {
    let missing: Vec<&str> = pack
        .schema_needs
        .iter()
        .filter(|need| !schema.contains(*need))
        .map(|need| need.trim_matches('"'))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "pack {:?} reads {} which this directory's schema does not declare: it was \
             written by an earlier anchor-pdp; merge the anchor.cedarschema of \
             `anchor-pdp policy export` into it",
            pack.name,
            missing.join(", ")
        )
    })
}

/// The pack called `name`, or an error naming the packs there are.
pub fn find(name: &str) -> Result<&'static Pack, String> {
    PACKS.iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = PACKS.iter().map(|p| p.name).collect();
        format!("unknown rule pack {name:?} (known: {})", known.join(", "))
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    packs: Vec<String>,
}

/// The packs `dir/packs.toml` enables (none when there is no such file), or the problems
/// with it, each at its line.
pub fn enabled(dir: &Path) -> Result<Vec<&'static Pack>, Vec<PolicyProblem>> {
    let path = dir.join(KEY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![problem(&path, None, format!("cannot read: {e}"))]),
    };
    let keys: KeyFile = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|span| line_col(&text, span.start));
        vec![problem(
            &path,
            at,
            format!(
                "{} (the file holds one key: packs = [\"labels\"])",
                e.message()
            ),
        )]
    })?;
    let mut packs: Vec<&'static Pack> = Vec::new();
    let mut problems = Vec::new();
    for name in &keys.packs {
        let at = text
            .find(&format!("\"{name}\""))
            .map(|o| line_col(&text, o));
        match find(name) {
            Ok(pack) if packs.iter().any(|p| p.name == pack.name) => {
                problems.push(problem(&path, at, format!("pack {name:?} named twice")))
            }
            Ok(pack) => packs.push(pack),
            Err(e) => problems.push(problem(&path, at, e)),
        }
    }
    if problems.is_empty() {
        Ok(packs)
    } else {
        Err(problems)
    }
}

/// Where a pack's file shows in problems: `pack labels/labels.cedar`.
pub fn display_path(pack: &Pack, file: &str) -> PathBuf {
    PathBuf::from(format!("pack {}", pack.name)).join(file)
}

fn problem(path: &Path, at: Option<(usize, usize)>, message: String) -> PolicyProblem {
    let (line, column) = at.unwrap_or((0, 0));
    PolicyProblem {
        file: path.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(text: &str) -> Result<Vec<&'static str>, Vec<String>> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(KEY_FILE), text).unwrap_or_else(|e| panic!("{e}"));
        enabled(dir.path())
            .map(|packs| packs.iter().map(|p| p.name).collect())
            .map_err(|problems| problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn the_key_file_names_known_packs_once() {
        assert_eq!(key_file("packs = [\"labels\"]\n"), Ok(vec!["labels"]));
        assert_eq!(key_file("packs = []\n"), Ok(vec![]));
        let unknown = key_file("# ours\npacks = [\"lables\"]\n").unwrap_err();
        assert!(
            unknown[0].ends_with("packs.toml:2:10: unknown rule pack \"lables\" (known: labels)"),
            "{unknown:?}"
        );
        let twice = key_file("packs = [\"labels\", \"labels\"]").unwrap_err();
        assert!(twice[0].contains("named twice"), "{twice:?}");
        let stray = key_file("pack = [\"labels\"]").unwrap_err();
        assert!(
            stray[0].contains("packs.toml:1:1: unknown field `pack`"),
            "{stray:?}"
        );
    }

    #[test]
    fn a_schema_from_before_the_pack_is_named_as_the_cause() {
        let labels = find("labels").unwrap_or_else(|e| panic!("{e}"));
        let current = include_str!("../../policies/anchor.cedarschema");
        assert_eq!(schema_gap(labels, current), None);
        let before: String = current
            .lines()
            .filter(|l| !l.contains("label") && !l.contains("likeness_of"))
            .collect::<Vec<_>>()
            .join("\n");
        let gap = schema_gap(labels, &before).unwrap_or_default();
        assert!(
            gap.starts_with(
                "pack \"labels\" reads label_shown, implicit_label, likeness_of which this directory's schema does not declare"
            ),
            "{gap}"
        );
    }

    #[test]
    fn no_key_file_enables_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(enabled(dir.path()).is_ok_and(|p| p.is_empty()));
    }
}
