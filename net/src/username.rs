//! The rules for names in the relay's username directory, in one place: the relay applies them
//! to every claim and lookup, clients apply them before signing or asking.
//!
//! A name is **normalized** by lowercasing its ASCII letters (nothing else is changed: no
//! trimming, no Unicode folding). The normalized name must then be
//! [`MIN_LEN`]..=[`MAX_LEN`] characters, each of `a-z`, `0-9`, `_`, `.` or `-`, the first one a
//! letter. Anything else (spaces, non-ASCII characters, a leading digit or symbol, too short or
//! too long) is refused; the relay answers `MALFORMED`. The account key signs the normalized
//! name (`hush_proto::transcripts::username`), so `Alice` and `alice` are one name.

/// Fewest characters in a name.
pub const MIN_LEN: usize = 3;

/// Most characters (bytes: names are ASCII) in a name.
pub const MAX_LEN: usize = 32;

/// Why a name is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Fewer than [`MIN_LEN`] or more than [`MAX_LEN`] characters.
    #[error("a username has {MIN_LEN} to {MAX_LEN} characters")]
    Length,
    /// The first character is not a letter.
    #[error("a username starts with a letter")]
    Start,
    /// A character other than `a-z`, `0-9`, `_`, `.`, `-` (after lowercasing).
    #[error("a username has only letters, digits, '_', '.' and '-'")]
    Character,
}

/// Normalizes `name` (ASCII lowercase) and checks it against the rules above.
pub fn normalize(name: &str) -> Result<String, UsernameError> {
    let lower = name.to_ascii_lowercase();
    if !(MIN_LEN..=MAX_LEN).contains(&lower.len()) {
        return Err(UsernameError::Length);
    }
    let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c);
    if !lower.bytes().all(allowed) {
        return Err(UsernameError::Character);
    }
    if !lower.bytes().next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(UsernameError::Start);
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::{UsernameError, normalize};

    #[test]
    fn names_are_lowercased_and_checked() {
        assert_eq!(normalize("Alice").as_deref(), Ok("alice"));
        assert_eq!(
            normalize("bob_the.builder-2").as_deref(),
            Ok("bob_the.builder-2")
        );
        assert_eq!(normalize("abc").as_deref(), Ok("abc"));
        let longest = "a".repeat(32);
        assert_eq!(normalize(&longest), Ok(longest.clone()));
        assert_eq!(normalize("ab"), Err(UsernameError::Length));
        assert_eq!(normalize(""), Err(UsernameError::Length));
        assert_eq!(normalize(&"a".repeat(33)), Err(UsernameError::Length));
        assert_eq!(normalize("1alice"), Err(UsernameError::Start));
        assert_eq!(normalize("_alice"), Err(UsernameError::Start));
        assert_eq!(normalize("al ice"), Err(UsernameError::Character));
        assert_eq!(normalize(" alice"), Err(UsernameError::Character));
        assert_eq!(normalize("alice\n"), Err(UsernameError::Character));
        assert_eq!(normalize("al/ice"), Err(UsernameError::Character));
        // Non-ASCII is refused, not folded: "é" is two bytes, both outside the alphabet.
        assert_eq!(normalize("josé"), Err(UsernameError::Character));
        assert_eq!(normalize("ΑLICE"), Err(UsernameError::Character));
    }
}
