//! Parse-don't-validate checks for user-supplied names and text: slugs, emails, labels, free text.

use crate::error::FieldErrors;

/// Longest slug (provider, role and org names).
pub const MAX_SLUG: usize = 63;
/// Longest display name or label.
pub const MAX_LABEL: usize = 200;
/// Longest free-text field (descriptions).
pub const MAX_TEXT: usize = 4000;
/// Longest caps.yaml document, in characters.
pub const MAX_CAPS: usize = 64 * 1024;
/// Longest email address.
pub const MAX_EMAIL: usize = 254;
/// Longest short text: model and credential names, config keys' values.
pub const MAX_SHORT: usize = 256;
/// Shortest and longest password.
pub const PASSWORD_CHARS: (usize, usize) = (8, 1024);

/// A slug: lowercase letters, digits and `-`, starting with a letter or digit, at most 63 characters.
pub fn check_slug(errs: &mut FieldErrors, field: &str, value: &str) {
    if value.is_empty() {
        errs.add(field, "must not be empty");
    } else if value.len() > MAX_SLUG {
        errs.add(field, format!("must be at most {MAX_SLUG} characters"));
    } else if !value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errs.add(field, "must be lowercase letters, digits and '-', starting with a letter or digit");
    }
}

/// Text that must be non-blank and at most `max` characters.
pub fn check_text(errs: &mut FieldErrors, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errs.add(field, "must not be blank");
    } else if value.chars().count() > max {
        errs.add(field, format!("must be at most {max} characters"));
    } else if value.chars().any(|c| c == '\0') {
        errs.add(field, "must not contain NUL characters");
    }
}

/// Optional text: checked when present.
pub fn check_opt_text(errs: &mut FieldErrors, field: &str, value: Option<&str>, max: usize) {
    if let Some(v) = value {
        check_text(errs, field, v, max);
    }
}

/// A plausible email address (one `@`, non-empty parts, a dot in the domain, no spaces). Normalised to lowercase by
/// `normalize_email`.
pub fn check_email(errs: &mut FieldErrors, field: &str, value: &str) {
    let ok = value.len() <= MAX_EMAIL
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && match value.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if !ok {
        errs.add(field, "must be a valid email address");
    }
}

pub fn normalize_email(value: &str) -> String {
    value.trim().to_ascii_lowercase()
}

/// A non-negative integer no larger than `max`.
pub fn check_range(errs: &mut FieldErrors, field: &str, value: Option<i64>, min: i64, max: i64) {
    if let Some(v) = value
        && !(min..=max).contains(&v)
    {
        errs.add(field, format!("must be between {min} and {max}"));
    }
}

/// A password: 8 to 1024 characters.
pub fn check_password(errs: &mut FieldErrors, field: &str, value: &str) {
    let n = value.chars().count();
    let (min, max) = PASSWORD_CHARS;
    if n < min {
        errs.add(field, format!("must be at least {min} characters"));
    } else if n > max {
        errs.add(field, format!("must be at most {max} characters"));
    }
}

/// The OpenAPI schemas of the checks above, built from the same limits, for request fields
/// (`#[schema(schema_with = names::schema::slug)]`). Each accepts no more than its check does (patterns are ECMA-262,
/// as JSON Schema wants), so a client that obeys the document is never refused for the shape of a value.
pub mod schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
    use utoipa::openapi::{RefOr, SchemaFormat};

    use super::*;

    /// A slug (`check_slug`).
    pub const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9-]*$";
    /// Non-blank text without NUL (`check_text`).
    pub const TEXT_PATTERN: &str = "^[^\\x00]*[^\\s\\x00][^\\x00]*$";
    /// An email address as `check_email` takes it, in printable ASCII: one `@`, a dot in the domain, which neither
    /// starts nor ends with one.
    pub const EMAIL_PATTERN: &str = "^[\\x21-\\x3f\\x41-\\x7e]+@[\\x21-\\x2d\\x2f-\\x3f\\x41-\\x7e][\\x21-\\x3f\\x41-\\x7e]*\\.[\\x21-\\x3f\\x41-\\x7e]*[\\x21-\\x2d\\x2f-\\x3f\\x41-\\x7e]$";
    /// A hostname (no glob) with an optional port, as `caps::domain_problem` takes it.
    pub const HOSTNAME_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(\\.|:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$";
    /// Longest hostname.
    pub const MAX_HOSTNAME: usize = 253;

    fn string(nullable: bool) -> ObjectBuilder {
        let t =
            if nullable { SchemaType::from_iter([Type::String, Type::Null]) } else { SchemaType::new(Type::String) };
        ObjectBuilder::new().schema_type(t)
    }

    /// A closed set of strings.
    pub fn string_enum<'a>(description: &str, values: impl IntoIterator<Item = &'a str>) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .enum_values(Some(values.into_iter().map(str::to_string)))
            .into()
    }

    pub fn slug() -> ObjectBuilder {
        string(false).min_length(Some(1)).max_length(Some(MAX_SLUG)).pattern(Some(SLUG_PATTERN))
    }

    /// Non-blank text of at most `max` characters (`check_text`), `null` allowed when `nullable`.
    pub fn text(max: usize, nullable: bool) -> ObjectBuilder {
        string(nullable).min_length(Some(1)).max_length(Some(max)).pattern(Some(TEXT_PATTERN))
    }

    pub fn label() -> ObjectBuilder {
        text(MAX_LABEL, false)
    }

    pub fn opt_label() -> ObjectBuilder {
        text(MAX_LABEL, true)
    }

    pub fn opt_text() -> ObjectBuilder {
        text(MAX_TEXT, true)
    }

    pub fn opt_short() -> ObjectBuilder {
        text(MAX_SHORT, true)
    }

    /// caps.yaml (`caps::validate`): its content is checked on write and cannot be described here.
    pub fn opt_caps() -> ObjectBuilder {
        string(true).max_length(Some(MAX_CAPS)).content_media_type("application/yaml")
    }

    pub fn email() -> ObjectBuilder {
        string(false)
            .max_length(Some(MAX_EMAIL))
            .pattern(Some(EMAIL_PATTERN))
            .format(Some(SchemaFormat::Custom("email".into())))
    }

    pub fn password() -> ObjectBuilder {
        string(false)
            .min_length(Some(PASSWORD_CHARS.0))
            .max_length(Some(PASSWORD_CHARS.1))
            .format(Some(SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Password)))
    }

    /// A hostname, optionally with a port (provider `domain`).
    pub fn hostname(nullable: bool) -> ObjectBuilder {
        string(nullable).min_length(Some(1)).max_length(Some(MAX_HOSTNAME)).pattern(Some(HOSTNAME_PATTERN))
    }

    /// An integer from `min` to `max` (`check_range`), `null` allowed.
    pub fn opt_int(min: i64, max: i64) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
            .format(Some(SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
            .minimum(Some(min))
            .maximum(Some(max))
    }

    /// A list of distinct items, at most `max`.
    pub fn distinct(item: impl Into<RefOr<Schema>>, max: usize, nullable: bool) -> ArrayBuilder {
        let t = if nullable { SchemaType::from_iter([Type::Array, Type::Null]) } else { SchemaType::new(Type::Array) };
        ArrayBuilder::new().schema_type(t).items(item.into()).max_items(Some(max)).unique_items(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug_ok(s: &str) -> bool {
        let mut e = FieldErrors::default();
        check_slug(&mut e, "name", s);
        e.is_empty()
    }

    #[test]
    fn slugs() {
        assert!(slug_ok("claude-prod"));
        assert!(slug_ok("a"));
        assert!(slug_ok("9lives"));
        assert!(!slug_ok(""));
        assert!(!slug_ok("-x"));
        assert!(!slug_ok("Caps"));
        assert!(!slug_ok("with space"));
        assert!(!slug_ok(&"a".repeat(64)));
    }

    #[test]
    fn emails() {
        let ok = |s: &str| {
            let mut e = FieldErrors::default();
            check_email(&mut e, "email", s);
            e.is_empty()
        };
        assert!(ok("ada@example.com"));
        assert!(!ok("ada"));
        assert!(!ok("ada@localhost"));
        assert!(!ok("a b@example.com"));
        assert!(!ok("@example.com"));
    }
}
