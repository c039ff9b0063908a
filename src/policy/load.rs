//! Loading a policy directory: schema, policies, rule annotations, validation. A set that
//! fails any check is refused whole, with `file:line:col` and the reason for every problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Effect, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator,
};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use crate::domain::Penalty;

/// One thing wrong with a policy directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file or directory as a whole.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub struct PolicyLoadError {
    pub dir: PathBuf,
    pub problems: Vec<PolicyProblem>,
}

impl fmt::Display for PolicyLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid policy set in {} ({} problem{}):",
            self.dir.display(),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// A rule as its annotations describe it, read once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: String,
    pub penalty: Penalty,
    pub message_en: String,
    pub message_zh: String,
    /// Position in load order, so violations are reported in the order the rules are written.
    pub order: usize,
}

/// Which of the facts that only some policy sets use this set reads. A policy can only read
/// an attribute by naming it, so a set whose policies never read one is not given it: its
/// decisions, explanations and memo keys stay what they were before the attribute existed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// `context.now_ms`: the time itself, which makes every decision's key unique.
    pub(crate) now: bool,
    /// The AI-content label observations (the label rule pack).
    pub(crate) labels: bool,
    /// The anchor's likeness and its consent filing (the label rule pack, C1).
    pub(crate) consent: bool,
}

impl Reads {
    /// From the attributes the policies read (`values::attributes_read`): exact, so a comment
    /// or a string that merely mentions a name gives nothing.
    fn of(read: &BTreeSet<String>) -> Reads {
        let any = |names: &[&str]| names.iter().any(|n| read.contains(*n));
        Reads {
            now: any(&["now_ms"]),
            labels: any(&[
                "label_shown",
                "label_kind",
                "implicit_label",
                "implicit_label_provider",
            ]),
            consent: any(&["likeness_of", "consent"]),
        }
    }
}

/// A validated policy set, ready to decide.
pub struct PolicyBundle {
    pub(crate) set: PolicySet,
    /// At LIVE: every policy but the warning-only rules, which go to `warning_set`, so that
    /// breaking one warns and lets the broadcast go on.
    pub(crate) live_set: PolicySet,
    pub(crate) warning_set: PolicySet,
    pub(crate) has_warning_rules: bool,
    pub(crate) rules: HashMap<PolicyId, RuleInfo>,
    rules_by_id: BTreeMap<String, RuleInfo>,
    version: String,
    pub(crate) types: super::inputs::EntityTypes,
    /// What the policies may read beyond the 2023 facts. A set whose policies never read
    /// `now_ms` does not get the time, only the conditions computed from it, and its
    /// decisions are memoized across time.
    pub(crate) reads: Reads,
    pub(crate) memo: super::memo::Memo,
}

impl PolicyBundle {
    /// Content hash of every schema and policy file, e.g. `sha256:1f2e…` (16 hex digits).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The rule a `forbid` policy enforces, by rule id.
    pub fn rule(&self, rule_id: &str) -> Option<&RuleInfo> {
        self.rules_by_id.get(rule_id)
    }

    /// Every rule, by id.
    pub fn rules(&self) -> impl Iterator<Item = &RuleInfo> {
        self.rules_by_id.values()
    }
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

fn describe(diag: &dyn Diagnostic, fallback: &dyn fmt::Display) -> String {
    let mut message = fallback.to_string();
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    message
}

fn first_offset(diag: &dyn Diagnostic) -> Option<usize> {
    diag.labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
}

struct SourceFile {
    path: PathBuf,
    text: String,
}

impl SourceFile {
    fn problem_at(&self, offset: Option<usize>, message: String) -> PolicyProblem {
        let (line, column) = offset.map_or((0, 0), |o| line_col(&self.text, o));
        PolicyProblem {
            file: self.path.clone(),
            line,
            column,
            message,
        }
    }
}

fn read_sources(
    dir: &Path,
    problems: &mut Vec<PolicyProblem>,
) -> (Vec<SourceFile>, Vec<SourceFile>) {
    let mut schemas = Vec::new();
    let mut policies = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(PolicyProblem {
                file: dir.to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot read policy directory: {e}"),
            });
            return (schemas, policies);
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let target = match path.extension().and_then(|e| e.to_str()) {
            Some("cedarschema") => &mut schemas,
            Some("cedar") => &mut policies,
            _ => continue,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => target.push(SourceFile { path, text }),
            Err(e) => problems.push(PolicyProblem {
                file: path,
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    (schemas, policies)
}

fn rule_id_is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Loads and validates every `*.cedarschema` and `*.cedar` file in `dir`.
pub fn load(dir: &Path) -> Result<PolicyBundle, PolicyLoadError> {
    let mut problems = Vec::new();
    let (schema_files, mut policy_files) = read_sources(dir, &mut problems);
    match super::packs::enabled(dir) {
        Ok(packs) => {
            let schema: String = schema_files.iter().map(|f| f.text.as_str()).collect();
            for pack in packs {
                if !schema_files.is_empty()
                    && let Some(gap) = super::packs::schema_gap(pack, &schema)
                {
                    problems.push(PolicyProblem {
                        file: dir.join(super::packs::KEY_FILE),
                        line: 0,
                        column: 0,
                        message: gap,
                    });
                    // Its rules would only repeat the gap as Cedar errors.
                    continue;
                }
                for (name, text) in pack.policies() {
                    policy_files.push(SourceFile {
                        path: super::packs::display_path(pack, name),
                        text: (*text).to_owned(),
                    });
                }
            }
        }
        Err(found) => problems.extend(found),
    }
    // By file name, so a pack enabled by name and the same pack exported into the directory
    // load in the same order with the same version.
    policy_files.sort_by(|a, b| (a.path.file_name(), &a.path).cmp(&(b.path.file_name(), &b.path)));
    let fail = |problems: Vec<PolicyProblem>| PolicyLoadError {
        dir: dir.to_owned(),
        problems,
    };

    if schema_files.is_empty() {
        problems.push(PolicyProblem {
            file: dir.to_owned(),
            line: 0,
            column: 0,
            message: "no *.cedarschema file: the policies cannot be validated".into(),
        });
    }
    if policy_files.is_empty() {
        problems.push(PolicyProblem {
            file: dir.to_owned(),
            line: 0,
            column: 0,
            message: "no *.cedar policy file".into(),
        });
    }

    let mut fragments = Vec::new();
    for file in &schema_files {
        match SchemaFragment::from_cedarschema_str(&file.text) {
            Ok((fragment, _warnings)) => fragments.push(fragment),
            Err(e) => problems.push(file.problem_at(first_offset(&e), describe(&e, &e))),
        }
    }
    let schema = if problems.is_empty() {
        match Schema::from_schema_fragments(fragments) {
            Ok(schema) => Some(schema),
            Err(e) => {
                let file = schema_files.first().map_or(dir, |f| f.path.as_path());
                problems.push(PolicyProblem {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    message: describe(&e, &e),
                });
                None
            }
        }
    } else {
        None
    };

    let mut attributes_read = BTreeSet::new();
    let mut set = PolicySet::new();
    let mut live_set = PolicySet::new();
    let mut warning_set = PolicySet::new();
    let mut rules = HashMap::new();
    let mut rules_by_id = BTreeMap::new();
    let mut origin: HashMap<PolicyId, (usize, usize)> = HashMap::new();
    let mut permits = 0usize;
    let mut forbids = 0usize;
    for (file_index, file) in policy_files.iter().enumerate() {
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(errors) => {
                for error in errors.iter() {
                    problems.push(file.problem_at(first_offset(error), describe(error, error)));
                }
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            problems.push(file.problem_at(None, "policy templates are not supported".into()));
        }
        // `PolicySet::from_str` names policies policy0, policy1, ... in source order.
        let mut in_order: Vec<_> = parsed.policies().collect();
        in_order.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut search_from = 0usize;
        for policy in in_order {
            let offset = policy.to_cedar().and_then(|text| {
                let found = file.text.get(search_from..)?.find(&text)? + search_from;
                search_from = found + text.len();
                Some(found)
            });
            let at = |message: String| file.problem_at(offset, message);
            if let Ok(json) = policy.to_json() {
                attributes_read.extend(super::values::attributes_read(&json));
                for stray in super::values::strays(&json) {
                    let quoted = format!("\"{}\"", stray.value);
                    let from = offset.unwrap_or(0);
                    let literal_at = file
                        .text
                        .get(from..)
                        .and_then(|rest| rest.find(&quoted))
                        .map(|i| i + from)
                        .or(offset);
                    problems.push(file.problem_at(
                        literal_at,
                        format!(
                            "{quoted} is not a value {} can take (one of {})",
                            stray.attribute,
                            stray.allowed.join(", ")
                        ),
                    ));
                }
            }
            let Some(rule_id) = policy.annotation("id") else {
                problems.push(at(
                    "policy has no @id(\"...\") annotation: every policy needs a rule id".into(),
                ));
                continue;
            };
            if !rule_id_is_valid(rule_id) {
                problems.push(at(format!(
                    "@id(\"{rule_id}\"): a rule id is 1-64 characters of [A-Za-z0-9_-]"
                )));
                continue;
            }
            let policy_id = PolicyId::new(rule_id);
            if let Some((other_file, _)) = origin.get(&policy_id) {
                let other = policy_files
                    .get(*other_file)
                    .map_or_else(String::new, |f| f.path.display().to_string());
                problems.push(at(format!("duplicate rule id {rule_id} (also in {other})")));
                continue;
            }
            let mut warning_only = false;
            match policy.effect() {
                Effect::Permit => permits += 1,
                Effect::Forbid => {
                    forbids += 1;
                    let mut missing = Vec::new();
                    let penalty = match policy.annotation("penalty") {
                        Some(value) => match Penalty::parse(value) {
                            Some(p) => Some(p),
                            None => {
                                problems.push(at(format!(
                                    "rule {rule_id}: @penalty(\"{value}\") must be one of warning, none, E1, E2"
                                )));
                                None
                            }
                        },
                        None => {
                            missing.push("@penalty");
                            None
                        }
                    };
                    let message_en = policy
                        .annotation("message_en")
                        .filter(|m| !m.trim().is_empty());
                    let message_zh = policy
                        .annotation("message_zh")
                        .filter(|m| !m.trim().is_empty());
                    if message_en.is_none() {
                        missing.push("@message_en");
                    }
                    if message_zh.is_none() {
                        missing.push("@message_zh");
                    }
                    if !missing.is_empty() {
                        problems.push(at(format!(
                            "rule {rule_id}: missing or empty {}",
                            missing.join(", ")
                        )));
                    }
                    warning_only = penalty == Some(Penalty::WarningOnly);
                    if let (Some(penalty), Some(en), Some(zh)) = (penalty, message_en, message_zh) {
                        let info = RuleInfo {
                            id: rule_id.to_owned(),
                            penalty,
                            message_en: en.to_owned(),
                            message_zh: zh.to_owned(),
                            order: rules.len(),
                        };
                        rules.insert(policy_id.clone(), info.clone());
                        rules_by_id.insert(rule_id.to_owned(), info);
                    }
                }
            }
            origin.insert(policy_id.clone(), (file_index, offset.unwrap_or(0)));
            let policy = policy.new_id(policy_id);
            let split = if warning_only {
                &mut warning_set
            } else {
                &mut live_set
            };
            for target in [split, &mut set] {
                if let Err(e) = target.add(policy.clone()) {
                    problems.push(at(e.to_string()));
                    break;
                }
            }
        }
    }
    if forbids == 0 && !policy_files.is_empty() {
        problems.push(PolicyProblem {
            file: dir.to_owned(),
            line: 0,
            column: 0,
            message: "no forbid policy: the set would let every broadcast through".into(),
        });
    }
    // With a problem found already, a missing permit is most likely its consequence (a policy
    // that did not parse), not a problem of its own.
    if permits == 0 && !policy_files.is_empty() && problems.is_empty() {
        problems.push(PolicyProblem {
            file: dir.to_owned(),
            line: 0,
            column: 0,
            message: "no permit policy: every broadcast would be denied".into(),
        });
    }

    let Some(schema) = schema else {
        return Err(fail(problems));
    };
    // Validate even with annotation problems, so one run reports everything there is to fix.
    {
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        for error in result.validation_errors() {
            let policy_id = error.policy_id();
            match origin
                .get(policy_id)
                .and_then(|(i, _)| policy_files.get(*i))
            {
                Some(file) => {
                    problems.push(file.problem_at(first_offset(error), error.to_string()))
                }
                None => problems.push(PolicyProblem {
                    file: dir.to_owned(),
                    line: 0,
                    column: 0,
                    message: error.to_string(),
                }),
            }
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems));
    }

    let types = super::inputs::EntityTypes::new().map_err(|message| {
        fail(vec![PolicyProblem {
            file: dir.to_owned(),
            line: 0,
            column: 0,
            message,
        }])
    })?;
    let mut hasher = Sha256::new();
    for file in schema_files.iter().chain(&policy_files) {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update([0]);
        hasher.update(file.text.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let has_warning_rules = warning_set.policies().next().is_some();
    Ok(PolicyBundle {
        has_warning_rules,
        set,
        live_set,
        warning_set,
        rules,
        rules_by_id,
        version: format!("sha256:{hex}"),
        types,
        reads: Reads::of(&attributes_read),
        memo: super::memo::Memo::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn shipped_policies_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let bundle = load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<_> = bundle.rules().map(|r| r.id.clone()).collect();
        assert_eq!(
            ids,
            ["E3", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9"]
        );
        assert_eq!(bundle.rule("R2").map(|r| r.penalty), Some(Penalty::E1));
        assert_eq!(bundle.rule("R7").map(|r| r.penalty), Some(Penalty::E2));
    }
}
