//! The attributes whose values are enumerations, and a check that a policy compares them only
//! with values they can take. The schema types them as strings, so Cedar's validator accepts
//! `"REAL_PERSN"`; a rule comparing with it would silently never (or always) match.

use crate::domain::{DriveMode, ImageStyle, LabelKind, LivestreamType, ReviewStatus, Tier};

/// The values an attribute (or context key) of this name can take, if it is enumerated.
pub fn allowed(attribute: &str) -> Option<Vec<&'static str>> {
    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|v| name(*v)).collect()
    }
    Some(match attribute {
        "tier" => {
            let mut tiers = names(&Tier::ALL, Tier::policy_name);
            tiers.push("UNREGISTERED");
            tiers
        }
        "image_style" => names(&ImageStyle::ALL, ImageStyle::policy_name),
        "review" => names(&ReviewStatus::ALL, ReviewStatus::policy_name),
        "livestream_type" => names(&LivestreamType::ALL, LivestreamType::policy_name),
        "drive_mode" => names(&DriveMode::ALL, DriveMode::policy_name),
        "label_kind" => names(&LabelKind::ALL, LabelKind::policy_name),
        "phase" => vec!["START", "LIVE"],
        _ => return None,
    })
}

/// Every attribute and context key a policy reads or tests for (`x.name`, `x has name`),
/// from its JSON form.
pub fn attributes_read(policy: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_attributes(policy, &mut found);
    found
}

fn collect_attributes(node: &serde_json::Value, found: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (op, body) in map {
                if matches!(op.as_str(), "." | "has")
                    && let Some(name) = body.get("attr").and_then(|a| a.as_str())
                {
                    found.push(name.to_owned());
                }
                collect_attributes(body, found);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_attributes(item, found);
            }
        }
        _ => {}
    }
}

/// A string a policy compares an enumerated attribute with, which it can never hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Stray {
    pub attribute: String,
    pub value: String,
    pub allowed: Vec<&'static str>,
}

/// Every stray value in a policy, from its JSON form (Cedar's EST).
pub fn strays(policy: &serde_json::Value) -> Vec<Stray> {
    let mut found = Vec::new();
    walk(policy, &mut found);
    found
}

/// The attribute an expression reads, if it is `<expr>.name`.
fn attribute(expr: &serde_json::Value) -> Option<&str> {
    expr.get(".")?.get("attr")?.as_str()
}

/// The string literals of an expression: a string, or a set of them.
fn literals(expr: &serde_json::Value) -> Vec<&str> {
    if let Some(s) = expr.get("Value").and_then(|v| v.as_str()) {
        return vec![s];
    }
    expr.get("Set")
        .and_then(|s| s.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("Value").and_then(|v| v.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

fn walk(node: &serde_json::Value, found: &mut Vec<Stray>) {
    match node {
        serde_json::Value::Object(map) => {
            for (op, body) in map {
                let compares = matches!(
                    op.as_str(),
                    "==" | "!=" | "contains" | "containsAll" | "containsAny" | "in"
                );
                if compares && let (Some(left), Some(right)) = (body.get("left"), body.get("right"))
                {
                    for (side, other) in [(left, right), (right, left)] {
                        let Some(name) = attribute(side) else {
                            continue;
                        };
                        let Some(allowed) = allowed(name) else {
                            continue;
                        };
                        for value in literals(other) {
                            if !allowed.contains(&value) {
                                found.push(Stray {
                                    attribute: name.to_owned(),
                                    value: value.to_owned(),
                                    allowed: allowed.clone(),
                                });
                            }
                        }
                    }
                }
                walk(body, found);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                walk(item, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strays_in(text: &str) -> Vec<(String, String)> {
        let policy = cedar_policy::Policy::parse(None, text).unwrap_or_else(|e| panic!("{e}"));
        let json = policy.to_json().unwrap_or_else(|e| panic!("{e}"));
        strays(&json)
            .into_iter()
            .map(|s| (s.attribute, s.value))
            .collect()
    }

    #[test]
    fn the_attributes_a_policy_reads_are_found_and_nothing_it_merely_mentions() {
        let policy = cedar_policy::Policy::parse(
            None,
            r#"// reads no consent
forbid(principal, action, resource) when {
  context.anchor has likeness_of && context.label_shown && principal.tier != "now_ms"
};"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let json = policy.to_json().unwrap_or_else(|e| panic!("{e}"));
        let mut read = attributes_read(&json);
        read.sort();
        read.dedup();
        assert_eq!(read, ["anchor", "label_shown", "likeness_of", "tier"]);
    }

    #[test]
    fn misspelled_enumerated_values_are_found_wherever_they_are_compared() {
        assert_eq!(
            strays_in(
                r#"forbid(principal, action, resource) when { context.drive_mode != "REAL_PERSN" };"#
            ),
            [("drive_mode".into(), "REAL_PERSN".into())]
        );
        assert_eq!(
            strays_in(
                r#"forbid(principal, action, resource) when { ["CARTON", "ANIME"].contains(context.anchor.image_style) };"#
            ),
            [("image_style".into(), "CARTON".into())]
        );
        assert!(
            strays_in(
                r#"permit(principal, action, resource) when { principal.tier == "CHINESE_GOLD_SUPPLIER" && context.phase == "LIVE" };"#
            )
            .is_empty()
        );
        assert_eq!(
            strays_in(
                r#"forbid(principal, action, resource) unless { ["OVERLAY", "INTERFASE"].contains(context.label_kind) };"#
            ),
            [("label_kind".into(), "INTERFASE".into())]
        );
    }
}
