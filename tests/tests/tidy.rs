//! House rules that a reviewer should not have to remember, checked on every run (in the style
//! of rust-analyzer's `tidy` test): source files that hold one job each, secrets that never
//! derive `Debug`, typed errors that are not flattened into strings, and an ARCHITECTURE.md
//! that names only paths that exist. A plain test: it reads the checkout, nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// The crates whose `src/` the rules cover: fuzz/ and the stories in tests/tests/ are test code,
/// but the end-to-end harness (tests/src/) is held to the same size as the rest.
const CRATES: &[&str] = &[
    "core",
    "api-client",
    "ca-daemon",
    "login-cli",
    "sshd-shim",
    "jump-proxy",
    "man",
    "bench",
    "tests",
];

/// About this many lines of code per file, not counting its unit-test module.
const MAX_LINES: usize = 800;

/// Files still over [`MAX_LINES`], each waiting for its split (issue 11). The list only
/// shrinks: a listed file that fits fails the test until it is taken off the list.
const OVERSIZED: &[&str] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every source file of [`CRATES`], as (path relative to the root, text).
fn sources() -> Vec<(String, String)> {
    let root = root();
    let mut files = Vec::new();
    for c in CRATES {
        rust_files(&root.join(c).join("src"), &mut files);
    }
    files.sort();
    assert!(files.len() > 50, "found only {} source files", files.len());
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Lines of code, not counting a unit-test module at the end of the file (`#[cfg(test)]`
/// followed by `mod tests`).
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let test_mod = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"));
    test_mod.unwrap_or(lines.len())
}

#[test]
fn source_files_hold_one_job_each() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let n = code_lines(&text);
        let listed = OVERSIZED.contains(&path.as_str());
        if n > MAX_LINES && !listed {
            problems.push(format!(
                "{path}: {n} lines of code (at most {MAX_LINES}): split it by concern"
            ));
        }
        if n <= MAX_LINES && listed {
            problems.push(format!(
                "{path}: {n} lines now fit: take it off tidy.rs's OVERSIZED list"
            ));
        }
    }
    for p in OVERSIZED {
        if !root().join(p).exists() {
            problems.push(format!("{p} is gone: take it off tidy.rs's OVERSIZED list"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Words that make a field a secret.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passphrase",
    "secret",
    "token",
    "invite",
    "private_key",
    "pem",
    "cookie",
];

/// Field types that are not secrets whatever the field's name (counters, flags, times), and
/// types whose `Debug` shows no secret (postern-core's `Secret`, and `Invite`, whose only
/// payload is one).
fn harmless_type(ty: &str) -> bool {
    let inner = ty
        .trim()
        .trim_start_matches("Option<")
        .trim_end_matches('>')
        .trim();
    matches!(
        inner,
        "bool" | "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" | "f64" | "Duration"
            // A path names where a secret is, and is not one.
            | "PathBuf"
    ) || inner.ends_with("Secret")
        || inner.ends_with("Invite")
        || inner.starts_with("Secret<")
        || inner.starts_with("SecretBox<")
}

/// (struct, field, type) of every field named like a secret, of a type that shows it, in a
/// struct that derives `Debug`.
fn debug_secrets(text: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut derives_debug = false;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if l.starts_with("#[derive(") {
            derives_debug = l.contains("Debug");
        } else if let Some(rest) = struct_name(l) {
            if derives_debug && l.ends_with('{') {
                let name = rest.to_owned();
                let mut j = i + 1;
                while j < lines.len() && lines[j].trim() != "}" {
                    if let Some((field, ty)) = field(lines[j]) {
                        let lower = field.to_ascii_lowercase();
                        if SECRET_WORDS.iter().any(|w| lower.contains(w)) && !harmless_type(&ty) {
                            found.push((name.clone(), field, ty));
                        }
                    }
                    j += 1;
                }
                i = j;
            }
            derives_debug = false;
        } else if !l.starts_with("#[") && !l.starts_with("///") && !l.is_empty() {
            derives_debug = false;
        }
        i += 1;
    }
    found
}

fn struct_name(line: &str) -> Option<&str> {
    let l = line
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("pub(super) ")
        .trim_start_matches("pub ");
    let rest = l.strip_prefix("struct ")?;
    rest.split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
}

fn field(line: &str) -> Option<(String, String)> {
    let l = line.trim();
    if l.starts_with("//") || l.starts_with("#[") {
        return None;
    }
    let l = l
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("pub(super) ")
        .trim_start_matches("pub ");
    let (name, ty) = l.split_once(':')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    Some((name.to_owned(), ty.trim().trim_end_matches(',').to_owned()))
}

#[test]
fn secrets_do_not_derive_debug() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        for (s, f, ty) in debug_secrets(&text) {
            problems.push(format!(
                "{path}: struct {s} derives Debug and its field {f}: {ty} would print a secret \
                 (hold it as postern_core::api::Secret, or write Debug by hand)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn tidy_finds_a_secret_in_a_debug_struct() {
    // The rule itself, on a sample: a check that cannot fail is no check.
    let sample = "#[derive(Debug, Clone)]\npub struct Row {\n    pub name: String,\n    \
                  totp_secret: Vec<u8>,\n    password_stdin: bool,\n    token: Secret,\n}\n";
    assert_eq!(
        debug_secrets(sample),
        vec![("Row".into(), "totp_secret".into(), "Vec<u8>".into())]
    );
    assert!(debug_secrets(&sample.replace("Debug, ", "")).is_empty());
}

/// `map_err(|e| anyhow!("{e}"))` and its spellings: the error's type and its chain of causes
/// become one string. `?` (or `.context(…)`) keeps both.
fn flattened_errors(text: &str) -> Vec<usize> {
    // Whitespace goes, so that a call split over lines reads as one; each squeezed line
    // remembers where it starts, for the line number.
    let mut joined = String::new();
    let mut starts = Vec::new();
    for (i, l) in text.lines().enumerate() {
        starts.push((joined.len(), i + 1));
        joined.extend(l.split_whitespace());
    }
    let mut found = Vec::new();
    for (at, _) in joined.match_indices(".map_err(|") {
        let rest = &joined[at + ".map_err(|".len()..];
        let Some((var, body)) = rest.split_once('|') else {
            continue;
        };
        let body = body.strip_prefix("anyhow::").unwrap_or(body);
        let flat = [
            format!("anyhow!(\"{{{var}}}\"))"),
            format!("anyhow!(\"{{}}\",{var}))"),
        ];
        if flat.iter().any(|f| body.starts_with(f.as_str())) {
            let line = starts
                .iter()
                .take_while(|(o, _)| *o <= at)
                .last()
                .map_or(0, |(_, n)| *n);
            found.push(line);
        }
    }
    found
}

#[test]
fn typed_errors_are_not_flattened() {
    let mut problems = Vec::new();
    for (path, text) in sources() {
        for line in flattened_errors(&text) {
            problems.push(format!(
                "{path}:{line}: map_err(|e| anyhow!(\"{{e}}\")) flattens a typed error into a \
                 string: use `?` or `.context(…)`"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn tidy_finds_a_flattened_error() {
    let sample = "fn f() {\n    let x = api\n        .post(\"/v1/join\", &req)\n        \
                  .map_err(|e| anyhow::anyhow!(\"{e}\"))?;\n}\n";
    assert_eq!(flattened_errors(sample), vec![4]);
    assert!(
        flattened_errors(&sample.replace(".map_err(|e| anyhow::anyhow!(\"{e}\"))", "")).is_empty()
    );
    let context = "x.map_err(|e| anyhow!(\"cannot read {p}: {e}\"))?;";
    assert!(flattened_errors(context).is_empty());
}

/// What runs SQL through rusqlite: a call of one of these outside `store/` is a service
/// writing SQL.
const SQL_CALLS: &[&str] = &[
    ".execute(",
    ".execute_batch(",
    ".query_row(",
    ".query_map(",
    ".prepare(",
    ".prepare_cached(",
    "params![",
];

/// The lines of `text` before its unit-test module that call rusqlite, by line number. A file
/// that is test code as a whole (`#![cfg(test)]`, such as a module of fixtures) has none.
fn sql_calls(text: &str) -> Vec<usize> {
    if text.lines().any(|l| l.trim() == "#![cfg(test)]") {
        return Vec::new();
    }
    text.lines()
        .take(code_lines(text))
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .filter(|(_, l)| SQL_CALLS.iter().any(|c| l.contains(c)))
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn sql_stays_in_the_store() {
    // ARCHITECTURE.md's invariant: posternd's services compose `store/`'s typed functions and
    // write no SQL (the seam a second database backend plugs into).
    let mut problems = Vec::new();
    for (path, text) in sources() {
        let Some(rel) = path.strip_prefix("ca-daemon/src/") else {
            continue;
        };
        if rel.starts_with("store/") || rel == "db.rs" {
            continue;
        }
        for line in sql_calls(&text) {
            problems.push(format!(
                "{path}:{line}: SQL outside ca-daemon/src/store/: add a typed function there"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn tidy_finds_sql_outside_the_store() {
    let sample = "fn f(c: &Connection) -> Result<()> {\n    c.execute(\"DELETE FROM locks\", [])?;\n    Ok(())\n}\n\n#[cfg(test)]\nmod tests {\n    fn g(c: &Connection) {\n        c.execute(\"SELECT 1\", []).unwrap();\n    }\n}\n";
    assert_eq!(sql_calls(sample), vec![2]);
    assert!(sql_calls(&format!("#![cfg(test)]\n{sample}")).is_empty());
}

/// The paths ARCHITECTURE.md names in backticks (`ca-daemon/src/tls.rs`, `names.rs`), with
/// their line numbers. Placeholders (`DATA/ca/audit.key`, `fuzz/corpus/TARGET`, `~/.ssh/…`),
/// system paths, build output (`target/…`) and URL paths are not paths of the checkout.
fn named_paths(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let mut parts = line.split('`');
        parts.next();
        while let Some(span) = parts.next() {
            parts.next();
            let candidate = span.trim_end_matches('/');
            let pathlike = !candidate.is_empty()
                && candidate
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
                && (candidate.contains('/')
                    || [".rs", ".toml", ".md", ".sh"]
                        .iter()
                        .any(|x| candidate.ends_with(x)));
            let first = candidate.split('/').next().unwrap_or("");
            let placeholder = candidate
                .split('/')
                .any(|part| part.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                || candidate.starts_with('/')
                || candidate.starts_with("target/")
                || GENERATED.iter().any(|g| candidate.starts_with(g))
                || candidate.starts_with('.')
                || candidate.starts_with("v1/")
                || first.contains('.') && candidate.contains('/');
            if pathlike && !placeholder {
                out.push((i + 1, candidate.to_owned()));
            }
        }
    }
    out
}

/// What scripts make and git ignores: named in ARCHITECTURE.md, absent from a clean checkout.
const GENERATED: &[&str] = &["fuzz/artifacts"];

/// Every file and directory of the checkout (relative paths), outside target directories.
fn checkout_paths(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy();
        if name == "target" || name == ".git" || name == "node_modules" {
            continue;
        }
        out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        if p.is_dir() {
            checkout_paths(&p, root, out);
        }
    }
}

#[test]
fn architecture_md_names_paths_that_exist() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut all = Vec::new();
    checkout_paths(&root, &root, &mut all);
    let named = named_paths(&doc);
    assert!(
        named.len() > 30,
        "ARCHITECTURE.md names only {} paths",
        named.len()
    );
    // A name may be given from the root (`ca-daemon/src/tls.rs`) or from within its crate's
    // section (`tls.rs`, `store/`): it must be some path of the checkout, or end one.
    let missing: Vec<String> = named
        .iter()
        .filter(|(_, p)| !all.iter().any(|a| a == p || a.ends_with(&format!("/{p}"))))
        .map(|(line, p)| format!("ARCHITECTURE.md:{line}: `{p}` does not exist"))
        .collect();
    assert!(missing.is_empty(), "\n{}", missing.join("\n"));
}
