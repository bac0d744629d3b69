//! Parse-don't-validate checks for user-supplied names and text: slugs, emails, labels, free text.

use crate::error::FieldErrors;

/// Longest slug (provider, role and org names).
pub const MAX_SLUG: usize = 63;
/// Longest display name or label.
pub const MAX_LABEL: usize = 200;
/// Longest free-text field (descriptions).
pub const MAX_TEXT: usize = 4000;
/// Longest caps.yaml document.
pub const MAX_CAPS: usize = 64 * 1024;
/// Longest email address.
pub const MAX_EMAIL: usize = 254;

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
    if n < 8 {
        errs.add(field, "must be at least 8 characters");
    } else if n > 1024 {
        errs.add(field, "must be at most 1024 characters");
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
