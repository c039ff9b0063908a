//! `serve --config FILE`: settings in TOML, each top-level key a long flag of `serve`
//! (`listen = "0.0.0.0:50051"`, `token = ["reviewer-1:reviewer:sha256:…"]`,
//! `metrics-listen = "127.0.0.1:9464"`). The file feeds clap through each flag's environment
//! variable, set only where the environment has none, so the precedence is one rule: a flag
//! beats the environment, which beats the file, which beats the default. A key that names no
//! flag, a table, or a list for a flag that takes one value is an error naming the file and
//! line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::config::Cli;

/// A flag of `serve` as the file may set it.
struct Flag {
    env: String,
    /// Several values, comma-separated in its environment variable.
    list: bool,
}

/// `serve`'s flags by long name (those with an environment variable: all of them).
fn serve_flags() -> BTreeMap<String, Flag> {
    let mut cli = Cli::command();
    let mut flags = BTreeMap::new();
    if let Some(serve) = cli.find_subcommand_mut("serve") {
        for arg in serve.get_arguments() {
            if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
                let list = arg.get_value_delimiter().is_some();
                flags.insert(
                    long.to_owned(),
                    Flag {
                        env: env.to_string_lossy().into_owned(),
                        list,
                    },
                );
            }
        }
    }
    flags
}

/// The config file named on a `serve` or `config show` command line (`--config F`,
/// `--config=F`), else by `ANCHOR_PDP_CONFIG`.
pub fn named(args: &[OsString]) -> Option<PathBuf> {
    let takes_config = args.iter().any(|a| a == "serve" || a == "show");
    if !takes_config {
        return None;
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("ANCHOR_PDP_CONFIG").map(PathBuf::from)
}

/// The 1-based line of `key`'s assignment in `text`, for errors.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let bare = line.strip_prefix(key);
            let quoted = line
                .strip_prefix(&format!("\"{key}\""))
                .or_else(|| line.strip_prefix(&format!("'{key}'")));
            bare.or(quoted)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// A TOML value as its flag's environment variable spells it.
fn env_value(value: &toml::Value, list: bool) -> Result<String, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        _ => Err("a table or a nested list is not a setting".to_owned()),
    };
    match value {
        toml::Value::Array(items) if list => {
            let items = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            if items.iter().any(|i| i.contains(',')) {
                return Err("list items may not contain ','".into());
            }
            Ok(items.join(","))
        }
        toml::Value::Array(_) => Err("this flag takes one value, not a list".into()),
        value => scalar(value),
    }
}

/// One setting of a config file: (key, its flag's environment variable, the value as that
/// variable spells it).
pub type Setting = (String, String, String);

/// The settings a file gives, or the first error as `FILE:LINE: why`.
pub fn read(path: &Path) -> Result<Vec<Setting>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the config file: {e}", path.display()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(1, |span| {
            text[..span.start.min(text.len())].lines().count().max(1)
        });
        format!("{}:{line}: {}", path.display(), e.message())
    })?;
    let flags = serve_flags();
    let mut settings = Vec::new();
    for (key, value) in &table {
        let at = || format!("{}:{}", path.display(), line_of(&text, key));
        let flag = flags.get(key.as_str()).ok_or_else(|| {
            format!(
                "{}: unknown key `{key}` (keys are the long flags of `anchor-pdp serve`, e.g. listen, data-dir, token)",
                at()
            )
        })?;
        if key == "config" {
            return Err(format!("{}: a config file cannot name another", at()));
        }
        let value = env_value(value, flag.list).map_err(|why| format!("{}: {key}: {why}", at()))?;
        settings.push((key.clone(), flag.env.clone(), value));
    }
    Ok(settings)
}

/// What the config file set, for `config show` and SIGHUP: (key, environment variable).
pub struct Applied {
    pub path: PathBuf,
    pub from_file: Vec<(String, String)>,
}

/// Feeds the named config file (if any) to clap through the environment: each key's variable
/// is set unless the environment already has it. Must run before any thread is started (it
/// sets environment variables).
pub fn apply(args: &[OsString]) -> Result<Option<Applied>, String> {
    let Some(path) = named(args) else {
        return Ok(None);
    };
    let settings = read(&path)?;
    let _ = STARTED_WITH.set((path.clone(), settings.clone()));
    // The live settings the file decides: given neither on the command line nor in the
    // environment (a SIGHUP re-reads only the file).
    let flags = serve_flags();
    let on_command_line = |key: &str| {
        args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{key}") || a.starts_with(&format!("--{key}="))
        })
    };
    let decided: Vec<String> = LIVE_KEYS
        .iter()
        .filter(|key| {
            let env = flags.get(**key).map(|f| f.env.as_str()).unwrap_or_default();
            !on_command_line(key) && std::env::var_os(env).is_none()
        })
        .map(|key| key.to_string())
        .collect();
    let _ = FILE_DECIDES.set(decided);
    let mut from_file = Vec::new();
    for (key, env, value) in settings {
        if std::env::var_os(&env).is_none() {
            // SAFETY: called from `main` before the runtime, the logger or any other thread
            // exists, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(&env, value) };
            from_file.push((key, env));
        }
    }
    Ok(Some(Applied { path, from_file }))
}

/// Settings a SIGHUP applies from the config file without a restart.
pub const LIVE_KEYS: [&str; 4] = ["token", "hook-secret", "ome-secret", "log-level"];

/// Of `LIVE_KEYS`, those the config file decides (set neither by flag nor environment).
static FILE_DECIDES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// A live setting: its key and values.
pub type LiveSetting = (String, Vec<String>);

/// The live settings as the config file gives them now, for the keys it decides: (key, its
/// values; none when the file no longer sets it). None without a config file.
pub fn live_settings() -> Option<Result<Vec<LiveSetting>, String>> {
    let (path, _) = STARTED_WITH.get()?;
    let decided = FILE_DECIDES.get()?;
    let flags = serve_flags();
    Some(read(path).map(|now| {
        decided
            .iter()
            .map(|key| {
                let list = flags.get(key.as_str()).is_some_and(|f| f.list);
                let values = now
                    .iter()
                    .find(|(k, _, _)| k == key)
                    .map(|(_, _, value)| match list {
                        true => value
                            .split(',')
                            .filter(|v| !v.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        // One value (log directives hold commas of their own).
                        false => vec![value.clone()],
                    })
                    .unwrap_or_default();
                (key.clone(), values)
            })
            .collect()
    }))
}

/// The file and its settings as the process started with them (for SIGHUP's report).
static STARTED_WITH: std::sync::OnceLock<(PathBuf, Vec<Setting>)> = std::sync::OnceLock::new();

/// The keys whose values in the config file differ from those the process started with and
/// that a SIGHUP does not apply (it applies the policies and `LIVE_KEYS`): these need a
/// restart. None without a config file.
pub fn changed_since_start() -> Option<Result<Vec<String>, String>> {
    let (path, started) = STARTED_WITH.get()?;
    Some(read(path).map(|now| {
        let live = FILE_DECIDES.get().cloned().unwrap_or_default();
        let mut changed: Vec<String> = now
            .iter()
            .filter(|setting| !started.contains(setting))
            .map(|(key, _, _)| key.clone())
            .chain(
                started
                    .iter()
                    .filter(|(key, _, _)| !now.iter().any(|(k, _, _)| k == key))
                    .map(|(key, _, _)| key.clone()),
            )
            .collect();
        changed.sort();
        changed.dedup();
        // Those a SIGHUP applies are not restart business.
        changed.retain(|key| !live.contains(key));
        changed
    }))
}

/// Flags whose values are secrets: shown as how many, never what (with every flag whose
/// environment value clap hides).
const SECRET_FLAGS: [&str; 4] = ["token", "hook-secret", "ome-secret", "etcd-password"];

/// `config show`: every `serve` setting as a config file would give it, with its source.
pub fn show(applied: Option<&Applied>) -> Result<String, String> {
    let mut cli = Cli::command();
    let matches = cli
        .try_get_matches_from_mut(std::env::args_os())
        .map_err(|e| e.to_string())?;
    let Some(("config", config)) = matches.subcommand() else {
        return Err("not a `config show` command line".into());
    };
    let Some(("show", shown)) = config.subcommand() else {
        return Err("not a `config show` command line".into());
    };
    let serve = cli
        .find_subcommand("serve")
        .ok_or("no serve command")?
        .clone();
    let mut out = String::new();
    if let Some(applied) = applied {
        out.push_str(&format!("# config file: {}\n", applied.path.display()));
    }
    for arg in serve.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if long == "config" || matches!(id, "help" | "version") {
            continue;
        }
        let source = match shown.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => {
                let from_file = applied.is_some_and(|a| a.from_file.iter().any(|(k, _)| k == long));
                if from_file { "file" } else { "env" }
            }
            Some(clap::parser::ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let values: Vec<String> = shown
            .get_raw(id)
            .map(|raw| {
                raw.map(|v| without_url_credentials(&v.to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        let shown_value = if SECRET_FLAGS.contains(&long) || arg.is_hide_env_values_set() {
            format!("\"<{} redacted>\"", values.len())
        } else if arg.get_value_delimiter().is_some() {
            format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            match values.first() {
                Some(v) => format!("{v:?}"),
                None if source == "unset" => {
                    out.push_str(&format!("# {long} = (unset)\n"));
                    continue;
                }
                None => "true".to_owned(),
            }
        };
        out.push_str(&format!("{long} = {shown_value}  # {source}\n"));
    }
    Ok(out)
}

/// `value` with the user information of every URL in it (`scheme://user:password@host`)
/// replaced, so a credential written into an endpoint (`--otlp-endpoint`, `--etcd`,
/// `--nginx-control`) is not printed.
fn without_url_credentials(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(scheme_end) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme_end + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ',', ' ']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_not_shown() {
        assert_eq!(
            without_url_credentials("https://user:s3cret@otel.example:4317/v1"),
            "https://<redacted>@otel.example:4317/v1"
        );
        assert_eq!(
            without_url_credentials("edge-1=http://admin:pw@127.0.0.1:8081/control"),
            "edge-1=http://<redacted>@127.0.0.1:8081/control"
        );
        assert_eq!(
            without_url_credentials("http://a:1@h1:2379,http://h2:2379"),
            "http://<redacted>@h1:2379,http://h2:2379"
        );
        assert_eq!(
            without_url_credentials("http://127.0.0.1:4317/?to=a@b"),
            "http://127.0.0.1:4317/?to=a@b"
        );
        assert_eq!(without_url_credentials("./data"), "./data");
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("anchor-pdp.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    #[test]
    fn keys_are_serves_long_flags_and_become_their_environment() {
        let (_dir, path) = file(
            "# comment\nlisten = \"0.0.0.0:50051\"\nrecheck-secs = 45\ntoken = [\"a:admin:sha256:00\", \"b:gateway:sha256:11\"]\ndeny-playback = true\n",
        );
        let settings = read(&path).unwrap_or_else(|e| panic!("{e}"));
        let get = |key: &str| {
            settings
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, env, value)| (env.as_str(), value.as_str()))
        };
        assert_eq!(get("listen"), Some(("ANCHOR_PDP_LISTEN", "0.0.0.0:50051")));
        assert_eq!(get("recheck-secs"), Some(("ANCHOR_PDP_RECHECK_SECS", "45")));
        assert_eq!(
            get("token"),
            Some(("ANCHOR_PDP_TOKENS", "a:admin:sha256:00,b:gateway:sha256:11"))
        );
        assert_eq!(
            get("deny-playback"),
            Some(("ANCHOR_PDP_DENY_PLAYBACK", "true"))
        );
    }

    #[test]
    fn unknown_keys_tables_and_lists_where_one_value_goes_name_file_and_line() {
        for (text, line, why) in [
            (
                "listen = \"127.0.0.1:1\"\n\nlisen = \"x\"\n",
                3,
                "unknown key `lisen`",
            ),
            ("listen = [\"a\", \"b\"]\n", 1, "takes one value"),
            ("[server]\nlisten = \"x\"\n", 1, "unknown key `server`"),
            ("listen = \n", 1, ""),
        ] {
            let (_dir, path) = file(text);
            let error = read(&path).expect_err(text);
            assert!(
                error.starts_with(&format!("{}:{line}: ", path.display())) && error.contains(why),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn the_config_flag_is_found_after_serve() {
        let args: Vec<OsString> = [
            "anchor-pdp",
            "--log-format",
            "json",
            "serve",
            "--config=/etc/a.toml",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(named(&args), Some(PathBuf::from("/etc/a.toml")));
        let policy: Vec<OsString> = ["anchor-pdp", "policy", "validate", "--config", "x"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(named(&policy), None);
    }
}
