//! `mcp-policy grant`: add, list and revoke the grants of a grants file.
//!
//! ```text
//! mcp-policy grant add NAME --policy POLICY_FILE --grants GRANTS_FILE [--expires TIME]
//! mcp-policy grant list --grants GRANTS_FILE
//! mcp-policy grant revoke NAME --grants GRANTS_FILE
//! ```
//!
//! `add` prints the new token alone on standard output, once: the file keeps only its
//! SHA-256. Every change is checked (the file must load, policies included) and written
//! whole with a rename, so a gateway watching the file never reads half of it.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use tower_mcp_policy::{Grants, Policy};

use crate::Outcome;

/// `mcp-policy grant`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a grant and print its token (once; only its hash is stored).
    Add {
        /// The grant's name: events, logs and metrics show it.
        name: String,
        /// The policy document the grant is judged under.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The grants file (created if missing).
        #[arg(long, value_name = "FILE")]
        grants: PathBuf,
        /// When the token stops working (RFC 3339, UTC: 2027-01-31T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// List the grants: names, policies, state, expiry (never the hashes in full).
    List {
        /// The grants file.
        #[arg(long, value_name = "FILE")]
        grants: PathBuf,
    },
    /// Revoke a grant: its token reaches nothing from the next request on (a
    /// gateway with --watch reloads the file).
    Revoke {
        /// The grant's name.
        name: String,
        /// The grants file.
        #[arg(long, value_name = "FILE")]
        grants: PathBuf,
    },
}

/// Runs the command; errors go to standard error.
pub fn run(command: Command) -> Outcome {
    let result = match command {
        Command::Add {
            name,
            policy,
            grants,
            expires,
        } => add(&name, &policy, &grants, expires.as_deref()),
        Command::List { grants } => list(&grants),
        Command::Revoke { name, grants } => revoke(&name, &grants),
    };
    match result {
        Ok(()) => Outcome::Fine,
        Err(message) => {
            eprintln!("mcp-policy grant: {message}");
            Outcome::Error
        }
    }
}

fn add(name: &str, policy: &Path, file: &Path, expires: Option<&str>) -> Result<(), String> {
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        return Err(format!("{name:?} is not a usable grant name"));
    }
    Policy::from_file(policy).map_err(|e| format!("cannot load the policy: {e}"))?;
    if let Some(time) = expires {
        humantime_check(time)?;
    }
    let mut doc = match std::fs::read_to_string(file) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("{}: not JSON: {e}", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            json!({"version": "1", "policies": {}, "grants": {}})
        }
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let base = file.parent().filter(|p| !p.as_os_str().is_empty());
    let base = base.unwrap_or(Path::new("."));
    let policy_name = policy_entry(&mut doc, policy, base)?;
    let grants = object(&mut doc, "grants")?;
    if grants.contains_key(name) {
        return Err(format!(
            "{} already has a grant named {name:?}; revoke it, or pick another name",
            file.display()
        ));
    }
    let token = new_token()?;
    let mut grant = json!({"policy": policy_name, "token_sha256": Grants::hash_token(&token)});
    if let Some(time) = expires {
        grant["expires"] = json!(time);
    }
    grants.insert(name.to_owned(), grant);
    write_checked(file, &doc)?;
    eprintln!(
        "mcp-policy grant: added {name:?} (policy {policy_name:?}) to {}; its token follows, shown this once",
        file.display()
    );
    println!("{token}");
    Ok(())
}

fn list(file: &Path) -> Result<(), String> {
    let grants = Grants::from_file(file).map_err(|e| e.to_string())?;
    let doc: Value = read(file)?;
    let mut rows = vec![[
        "GRANT".to_owned(),
        "POLICY".to_owned(),
        "STATE".to_owned(),
        "EXPIRES".to_owned(),
        "TOKEN".to_owned(),
    ]];
    for (name, policy) in grants.names() {
        let entry = &doc["grants"][name];
        let expires = entry["expires"].as_str().unwrap_or("never");
        let state = if entry["revoked"] == true {
            "revoked"
        } else if humantime::parse_rfc3339(expires)
            .is_ok_and(|at| at <= std::time::SystemTime::now())
        {
            "expired"
        } else {
            "active"
        };
        let token = match entry["token_sha256"].as_str() {
            Some(hash) => format!("sha256:{}…", &hash[..8.min(hash.len())]),
            None => "(Grant extension only)".to_owned(),
        };
        rows.push([
            name.to_owned(),
            policy.to_owned(),
            state.to_owned(),
            expires.to_owned(),
            token,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        say!(out, "{}", cells.join("  ").trim_end());
    }
    crate::print(&out);
    Ok(())
}

fn revoke(name: &str, file: &Path) -> Result<(), String> {
    let mut doc: Value = read(file)?;
    let grants = object(&mut doc, "grants")?;
    let Some(grant) = grants.get_mut(name) else {
        let known: Vec<&String> = grants.keys().collect();
        return Err(format!(
            "{} has no grant named {name:?} (it has: {})",
            file.display(),
            known
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    grant["revoked"] = json!(true);
    write_checked(file, &doc)?;
    eprintln!("mcp-policy grant: revoked {name:?} in {}", file.display());
    Ok(())
}

fn read(file: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", file.display()))
}

/// The object `doc[key]`, created when missing.
fn object<'a>(doc: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, String> {
    let root = doc
        .as_object_mut()
        .ok_or("the grants file is not a JSON object")?;
    root.entry(key)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| format!("`{key}` in the grants file is not an object"))
}

/// The name under `policies` of the policy file `policy`: the entry that already names
/// it, or a new one named after the file.
fn policy_entry(doc: &mut Value, policy: &Path, base: &Path) -> Result<String, String> {
    let wanted = std::fs::canonicalize(policy)
        .map_err(|e| format!("cannot read {}: {e}", policy.display()))?;
    let policies = object(doc, "policies")?;
    for (name, path) in policies.iter() {
        let Some(path) = path.as_str() else { continue };
        if std::fs::canonicalize(base.join(path)).ok().as_ref() == Some(&wanted) {
            return Ok(name.clone());
        }
    }
    let stem = policy
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("policy")
        .to_owned();
    let name = (1..)
        .map(|n| match n {
            1 => stem.clone(),
            n => format!("{stem}-{n}"),
        })
        .find(|candidate| !policies.contains_key(candidate))
        .expect("a free name");
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let path = match wanted.strip_prefix(&base) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => wanted.clone(),
    };
    policies.insert(name.clone(), json!(path.to_string_lossy()));
    Ok(name)
}

/// Writes `doc` to `file` through a temporary file in the same directory, renamed over
/// it only once it loads as a grants file.
fn write_checked(file: &Path, doc: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(doc).expect("JSON") + "\n";
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("grants.json");
    let temporary = file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    if let Err(error) = Grants::from_file(&temporary) {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("the new file would not load: {error}"));
    }
    std::fs::rename(&temporary, file).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot write {}: {e}", file.display())
    })
}

/// A new token: 256 random bits from the operating system, as 64 hex digits after a
/// prefix that says what it is (and that secret scanners can match).
fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    Ok(bytes.iter().fold(String::from("mcp_"), |mut token, b| {
        use std::fmt::Write;
        let _ = write!(token, "{b:02x}");
        token
    }))
}

fn humantime_check(time: &str) -> Result<(), String> {
    humantime::parse_rfc3339(time).map(|_| ()).map_err(|e| {
        format!("--expires {time:?}: {e}; expected a UTC time such as 2027-01-31T00:00:00Z")
    })
}
