//! Errors raised while loading a policy.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong while loading a policy; see [`PolicyError::kind`].
///
/// ```
/// use tower_mcp_policy::{Policy, PolicyErrorKind};
///
/// let error = r#"{ "version": "1", "default": "deny", "tools": { "transfer": {
///     "deny_if": [{ "conditions": [{ "path": "args.amount", "op": "gtt", "value": 1 }] }] } } }"#
///     .parse::<Policy>()
///     .unwrap_err();
/// assert_eq!(error.kind(), PolicyErrorKind::Invalid);
/// assert_eq!(error.pointer(), "/tools/transfer/deny_if/0/conditions/0/op");
/// assert_eq!(error.line(), Some(2));
/// assert!(error.to_string().starts_with("/tools/transfer/deny_if/0/conditions/0/op: unknown variant `gtt`"), "{error}");
///
/// let error = Policy::from_file("/nonexistent/policy.json").unwrap_err();
/// assert_eq!(error.kind(), PolicyErrorKind::Io);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not JSON (a syntax error, with line and column).
    Syntax,
    /// The JSON is not a valid policy: a wrong type, an unknown field, a bad value.
    Invalid,
}

/// A policy that could not be loaded.
///
/// Its [`Display`](fmt::Display) is one line naming the file (when there is one), the
/// JSON Pointer of the offending value, the reason and, for syntax errors, line and column:
///
/// ```text
/// policy.json: /tools/transfer/deny_if/0/conditions/1/op: unknown variant `gtt`, expected one of `eq`, … (line 9, column 52)
/// ```
///
/// Its `Debug` is the same line, so `main` returning `Result<(), Box<dyn Error>>` prints
/// it readably. See the example on [`PolicyErrorKind`] for its parts.
pub struct PolicyError {
    kind: PolicyErrorKind,
    file: Option<PathBuf>,
    pointer: String,
    message: String,
    position: Option<(usize, usize)>,
    /// The other mistakes found in the same document, in order (boxed: the error
    /// stays small for the `Result`s that carry it).
    others: Option<Box<[PolicyError]>>,
}

impl PolicyError {
    pub(crate) fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            kind: PolicyErrorKind::Invalid,
            file: None,
            pointer: pointer.into(),
            message: message.into(),
            position: None,
            others: None,
        }
    }

    pub(crate) fn io(file: &Path, err: &std::io::Error) -> Self {
        PolicyError {
            kind: PolicyErrorKind::Io,
            file: Some(file.to_path_buf()),
            pointer: String::new(),
            message: format!("cannot read the policy file: {err}"),
            position: None,
            others: None,
        }
    }

    /// Builds the error for a `serde_json` failure at `pointer`.
    pub(crate) fn from_json(pointer: String, err: &serde_json::Error) -> Self {
        let kind = match err.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                PolicyErrorKind::Syntax
            }
            _ => PolicyErrorKind::Invalid,
        };
        let full = err.to_string();
        let position = (err.line() > 0).then(|| (err.line(), err.column()));
        // serde_json appends " at line L column C"; we print the position our own way.
        let message = match position {
            Some((line, column)) => full
                .strip_suffix(&format!(" at line {line} column {column}"))
                .unwrap_or(&full)
                .to_owned(),
            None => full,
        };
        PolicyError {
            kind,
            file: None,
            pointer,
            message,
            position,
            others: None,
        }
    }

    /// The first of `errors` (in document order), carrying the others; `None` when
    /// there is none.
    pub(crate) fn all(mut errors: Vec<PolicyError>) -> Option<PolicyError> {
        if errors.is_empty() {
            return None;
        }
        let mut first = errors.remove(0);
        if !errors.is_empty() {
            first.others = Some(errors.into_boxed_slice());
        }
        Some(first)
    }

    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        for other in self.others.iter_mut().flat_map(|others| others.iter_mut()) {
            other.file = Some(file.to_path_buf());
        }
        self
    }

    /// The other mistakes found in the same document, after this one, so one run
    /// reports them all (each with its own pointer; only the first knows its line).
    /// `Display` prints them all, one per line.
    ///
    /// ```
    /// use tower_mcp_policy::Policy;
    ///
    /// let error = r#"{"version":"1","default":"deny","tools":{
    ///     "a":{"limit":[]},
    ///     "b":{"deny_if":[{"conditions":[{"path":"args.x","op":"gtt","value":1}]}]}}}"#
    ///     .parse::<Policy>()
    ///     .unwrap_err();
    /// assert_eq!(error.others().len(), 1);
    /// assert_eq!(error.to_string().lines().count(), 2);
    /// ```
    pub fn others(&self) -> &[PolicyError] {
        self.others.as_deref().unwrap_or_default()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> PolicyErrorKind {
        self.kind
    }

    /// The JSON Pointer (RFC 6901) of the offending value; empty for the whole document.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The reason, without location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The line of the error, when the JSON parser knows it (1-based).
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The column of the error, when the JSON parser knows it (1-based).
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    /// The file the policy was loaded from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// The message, as `Display` writes it: a `main` that returns `Result<(), Box<dyn
/// Error>>` prints `Error: policy.json: /tools/x/limits/0/max: ...`, not a struct.
impl fmt::Debug for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.kind != PolicyErrorKind::Io {
            let pointer = if self.pointer.is_empty() {
                "/"
            } else {
                &self.pointer
            };
            write!(f, "{pointer}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.position {
            write!(f, " (line {line}, column {column})")?;
        }
        for other in self.others() {
            write!(f, "\n{other}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Appends one reference token to a JSON Pointer, escaping `~` and `/` (RFC 6901).
pub(crate) fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// `base` followed by `tokens`, as a JSON Pointer.
pub(crate) fn pointer(base: &str, tokens: &[&str]) -> String {
    let mut p = base.to_owned();
    for t in tokens {
        push_token(&mut p, t);
    }
    p
}
