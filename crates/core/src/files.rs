//! Paths inside a workspace (`RelPath`: relative, normalised, never escaping the root) and the `FileEntry` shape the
//! live-sandbox and snapshot file routes share.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One file, directory or symlink in a workspace tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Slash-separated path relative to `/workspace`.
    pub path: String,
    /// Size in bytes (0 for directories; the target length for symlinks).
    pub size: i64,
    pub is_dir: bool,
    /// Modification time: Unix epoch seconds with fractional milliseconds.
    pub mtime: f64,
    /// No write permission for the owner.
    pub readonly: bool,
    /// Guessed from the extension; `inode/directory` for directories, `inode/symlink` for links.
    pub mime_type: Option<String>,
}

/// Largest path accepted in a file route, in bytes.
pub const MAX_PATH: usize = 4096;

/// One `RelPath` component as ECMA-262: not empty, `.` or `..`, without `/`, `\` or NUL.
macro_rules! component {
    () => {
        r"([^/\\\x00.][^/\\\x00]*|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)"
    };
}

/// What `RelPath::parse` accepts, as a JSON Schema pattern: components joined by single slashes, one trailing slash
/// allowed.
pub const REL_PATH_PATTERN: &str = concat!("^", component!(), "(/", component!(), ")*/?$");

/// The OpenAPI schema of a file path. `maxLength` counts characters while the server counts bytes, so it says a
/// quarter of `MAX_PATH` (every UTF-8 character is at most four bytes): whatever it allows, the server takes.
pub fn rel_path_schema() -> utoipa::openapi::ObjectBuilder {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_PATH / 4))
        .pattern(Some(REL_PATH_PATTERN))
}

/// A validated path relative to a workspace root: no empty, `.` or `..` components, not absolute, no NUL or
/// backslash. `RelPath::parse("../../etc/passwd")` fails; that is the 400 every file route answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must not be empty");
        }
        if raw.len() > MAX_PATH {
            return Err("is too long");
        }
        if raw.starts_with('/') {
            return Err("must be relative to the workspace root");
        }
        if raw.contains('\0') || raw.contains('\\') {
            return Err("must not contain NUL or backslash characters");
        }
        let trimmed = raw.trim_end_matches('/');
        for comp in trimmed.split('/') {
            match comp {
                "" => return Err("must not contain empty components (`//`)"),
                "." | ".." => return Err("must not contain `.` or `..` components"),
                _ => {}
            }
        }
        Ok(Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in ["", "/etc/passwd", "../../etc/passwd", "a/../b", "a/./b", "a//b", "a\\b", "a\0b", ".."] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(RelPath::parse("src/main.rs").unwrap().as_str(), "src/main.rs");
        assert_eq!(RelPath::parse("dir/").unwrap().as_str(), "dir");
        assert_eq!(RelPath::parse("..hidden").unwrap().as_str(), "..hidden");
        assert_eq!(RelPath::parse("a/b.txt").unwrap().file_name(), "b.txt");
    }
}
