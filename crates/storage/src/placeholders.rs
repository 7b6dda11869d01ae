//! `?` → `$n` for PostgreSQL, skipping quoted text and comments.

/// Copies the text quoted by `quote` (just read) to `out`, through its closing quote. A
/// doubled quote inside is an escaped quote; this sees it as the end, and the caller's
/// next call as an immediate restart, which copies it unchanged.
fn copy_quoted(quote: char, chars: &mut impl Iterator<Item = char>, out: &mut String) {
    out.push(quote);
    for inner in chars.by_ref() {
        out.push(inner);
        if inner == quote {
            break;
        }
    }
}

/// Rewrites each `?` placeholder of `sql` to `$1`, `$2`, … in order. A `?` inside a
/// string literal, a quoted identifier or a comment is not a placeholder and is kept.
/// (PostgreSQL's JSON `?` operators cannot be used in portable SQL; none of ours do.)
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 1;
    while let Some(c) = chars.next() {
        match c {
            '?' => {
                out.push('$');
                out.push_str(&next.to_string());
                next += 1;
            }
            '\'' | '"' | '`' => copy_quoted(c, &mut chars, &mut out),
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut previous = '\0';
                for inner in chars.by_ref() {
                    out.push(inner);
                    if previous == '*' && inner == '/' {
                        break;
                    }
                    previous = inner;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Splits a migration script into statements at `;`, with the same quoting rules.
/// Empty statements (and comment-only tails) are dropped.
pub(crate) fn statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let mut has_code = false;
    while let Some(c) = chars.next() {
        match c {
            ';' => {
                if has_code {
                    statements.push(current.trim().to_owned());
                }
                current.clear();
                has_code = false;
            }
            '\'' | '"' | '`' => {
                has_code = true;
                copy_quoted(c, &mut chars, &mut current);
            }
            '-' if chars.peek() == Some(&'-') => {
                for inner in chars.by_ref() {
                    if inner == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut previous = '\0';
                for inner in chars.by_ref() {
                    if previous == '*' && inner == '/' {
                        break;
                    }
                    previous = inner;
                }
                current.push(' ');
            }
            _ => {
                has_code |= !c.is_whitespace();
                current.push(c);
            }
        }
    }
    if has_code {
        statements.push(current.trim().to_owned());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered("INSERT INTO t (a, b, c) VALUES (?, ?, ?)"),
            "INSERT INTO t (a, b, c) VALUES ($1, $2, $3)"
        );
    }

    #[test]
    fn question_marks_in_quotes_and_comments_are_kept() {
        assert_eq!(
            numbered("SELECT '?', \"a?\" FROM t -- why?\nWHERE x = ? /* or ? */ AND y = ?"),
            "SELECT '?', \"a?\" FROM t -- why?\nWHERE x = $1 /* or ? */ AND y = $2"
        );
        assert_eq!(
            numbered("SELECT 'it''s?' WHERE a = ?"),
            "SELECT 'it''s?' WHERE a = $1"
        );
    }

    #[test]
    fn scripts_split_at_semicolons_outside_quotes() {
        let script = "-- users\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n/* second; */ CREATE INDEX i ON a (x);\n-- trailing comment\n";
        assert_eq!(
            statements(script),
            vec![
                "CREATE TABLE a (x TEXT DEFAULT ';')".to_owned(),
                "CREATE INDEX i ON a (x)".to_owned()
            ]
        );
    }
}
