//! What the page tests share: reading a page and turning its roff back into plain text.

#![allow(dead_code)] // each test file uses part of it

use std::path::PathBuf;

/// A page in `man/`.
pub fn page(file: &str) -> String {
    let path: PathBuf = postern_man::man_dir().join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (run scripts/man)", path.display()))
}

/// Every page in `man/`: the generated ones and the hand-written ones.
pub fn all_pages() -> Vec<String> {
    postern_man::command_pages()
        .iter()
        .map(|p| p.file.to_owned())
        .chain(postern_man::FILE_PAGES.iter().map(|f| f.to_string()))
        .collect()
}

/// The text a roff line prints: escapes resolved, font changes dropped.
pub fn unroff(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('-') => out.push('-'),
            Some('\\') | Some('e') => out.push('\\'),
            Some('&') => {}
            // \fB, \fI, \fR, \fP: one letter; \f[...]: a bracketed name.
            Some('f') if chars.next() == Some('[') => {
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
            }
            Some('f') => {}
            Some('*') => {
                let name: String = match chars.next() {
                    Some('(') => chars.by_ref().take(2).collect(),
                    Some(c) => c.to_string(),
                    None => String::new(),
                };
                out.push_str(if name == "Aq" { "'" } else { "" });
            }
            Some('(') => {
                let name: String = chars.by_ref().take(2).collect();
                out.push_str(match name.as_str() {
                    "dq" => "\"",
                    "aq" => "'",
                    "bu" => "*",
                    _ => "?",
                });
            }
            Some('[') => {
                let mut name = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    name.push(c);
                }
                let decoded = name
                    .strip_prefix('u')
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32);
                match (decoded, name.as_str()) {
                    (Some(c), _) => out.push(c),
                    (None, "dq") => out.push('"'),
                    (None, "aq") => out.push('\''),
                    _ => out.push('?'),
                }
            }
            Some(' ') => out.push(' '),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The preformatted blocks (`.nf` … `.fi`) of a page, as plain text lines.
pub fn blocks(page: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in page.lines() {
        match (line, &mut cur) {
            (".nf", None) => cur = Some(Vec::new()),
            (".fi", Some(_)) => out.extend(cur.take()),
            (l, Some(b)) if !l.starts_with('.') => b.push(unroff(l)),
            _ => {}
        }
    }
    out
}
