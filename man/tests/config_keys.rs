//! Every key of posternd.toml, gate.toml and the policy file is documented in its section-5
//! page, under the heading of its table, and the pages document no key the code does not
//! accept. The keys come from the parsers themselves, never from a list kept by hand: every
//! configuration struct denies unknown fields, and serde's error for an unknown field lists
//! the fields the struct has ("unknown field `x`, expected one of `a`, `b`"). Probing each
//! table with an unknown key therefore reveals its keys, and probing each key with a table
//! reveals which keys are tables themselves (or maps of named tables, like `[roles.NAME]`).
//! The TOML examples of the pages are parsed by the same parsers.

#[cfg(test)] // clippy: helpers of tests may panic like the tests themselves
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{blocks, page};

/// A key no configuration has.
const PROBE: &str = "postern_man_probe";
/// A name for a table in a map of named tables (`[roles.NAME]`).
const NAME: &str = "postern_man_name";

type Parse = dyn Fn(&str) -> Result<(), String>;

fn policy(text: &str) -> Result<(), String> {
    postern_core::Policy::parse(text, "policy.toml")
        .map(drop)
        .map_err(|e| e.to_string())
}

fn posternd_toml(text: &str) -> Result<(), String> {
    posternd::config::Config::parse(text, Path::new("/etc/postern/posternd.toml")).map(drop)
}

fn gate_toml(text: &str) -> Result<(), String> {
    toml::from_str::<postern_gate::config::GateConfig>(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The keys a configuration file has, as `(table, key)`; tables are dotted paths with `*`
/// for a name (`roles.*`), the top level is `""`.
#[derive(Debug, Default, PartialEq)]
struct Keys {
    tables: BTreeSet<String>,
    keys: BTreeSet<(String, String)>,
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|p| if p == NAME { "*" } else { p.as_str() })
        .collect::<Vec<_>>()
        .join(".")
}

/// The fields of the table at `path`, from the parser's error for an unknown key there;
/// `None` when `path` is not a table of fields.
fn fields(parse: &Parse, path: &[String]) -> Option<Vec<String>> {
    let doc = if path.is_empty() {
        format!("{PROBE} = 1\n")
    } else {
        let header: Vec<String> = path.iter().map(|p| format!("\"{p}\"")).collect();
        format!("[{}]\n{PROBE} = 1\n", header.join("."))
    };
    let err = parse(&doc).err()?;
    let at = err.find(&format!("unknown field `{PROBE}`"))?;
    let msg = err[at..].lines().next().unwrap_or_default();
    // "unknown field `p`, expected `a`", "... expected `a` or `b`",
    // "... expected one of `a`, `b`, `c`", "... there are no fields"
    Some(
        msg.split('`')
            .skip(3)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

fn explore(parse: &Parse, path: Vec<String>, out: &mut Keys) {
    let Some(fields) = fields(parse, &path) else {
        return;
    };
    out.tables.insert(dotted(&path));
    for f in fields {
        let mut sub = path.clone();
        sub.push(f.clone());
        if self::fields(parse, &sub).is_some() {
            explore(parse, sub, out);
            continue;
        }
        let mut named = sub.clone();
        named.push(NAME.to_owned());
        if self::fields(parse, &named).is_some() {
            explore(parse, named, out);
            continue;
        }
        out.keys.insert((dotted(&path), f));
    }
}

fn keys_in_code(parse: &Parse) -> Keys {
    let mut k = Keys::default();
    explore(parse, Vec::new(), &mut k);
    k
}

/// What a page documents: under `.SH KEYS`, each `.SS "[table]"` heading (with upper-case
/// placeholders such as `NAME` standing for `*`), and the first word of each `.TP` tag.
/// Tags outside a `[table]` heading are top-level keys.
fn keys_in_page(text: &str) -> Keys {
    let mut k = Keys::default();
    let mut in_keys = false;
    let mut table = String::new();
    let mut tag_next = false;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix(".SH ") {
            in_keys = h.trim_matches('"') == "KEYS";
            table.clear();
            continue;
        }
        if !in_keys {
            continue;
        }
        if let Some(h) = line.strip_prefix(".SS ") {
            let h = common::unroff(h.trim_matches('"'));
            table = match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(t) => t
                    .split('.')
                    .map(|p| {
                        if p.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                            "*"
                        } else {
                            p
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("."),
                None => String::new(),
            };
            k.tables.insert(table.clone());
            continue;
        }
        if line == ".TP" {
            tag_next = true;
            continue;
        }
        if tag_next {
            tag_next = false;
            let tag = common::unroff(line.trim_start_matches(".B ").trim_start_matches(".BR "));
            if let Some(key) = tag.split_whitespace().next() {
                k.keys
                    .insert((table.clone(), key.trim_matches('"').to_owned()));
            }
        }
    }
    k
}

/// Compares code and page; the messages say what to write where.
fn compare(file: &str, code: &Keys, page: &Keys) -> Vec<String> {
    let mut out = Vec::new();
    let heading = |t: &str| {
        if t.is_empty() {
            "the top-level part of KEYS".to_owned()
        } else {
            format!(".SS \"[{}]\"", t.replace('*', "NAME"))
        }
    };
    for t in &code.tables {
        let has_keys = code.keys.iter().any(|(table, _)| table == t);
        if !t.is_empty() && has_keys && !page.tables.contains(t) {
            out.push(format!(
                "man/{file} has no {} section under KEYS",
                heading(t)
            ));
        }
    }
    for (t, key) in &code.keys {
        if !page.keys.contains(&(t.clone(), key.clone())) {
            let full = if t.is_empty() {
                key.clone()
            } else {
                format!("{t}.{key}")
            };
            out.push(format!(
                "man/{file} does not document `{full}`: add a .TP entry for {key} under {}",
                heading(t)
            ));
        }
    }
    for (t, key) in &page.keys {
        if !code.keys.contains(&(t.clone(), key.clone())) {
            out.push(format!(
                "man/{file} documents `{key}` under {}, which the code does not accept there",
                heading(t)
            ));
        }
    }
    out
}

fn check(file: &str, parse: &Parse) -> Keys {
    let code = keys_in_code(parse);
    let problems = compare(file, &code, &keys_in_page(&page(file)));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    code
}

#[test]
fn every_policy_key_is_documented() {
    let code = check("postern-policy.toml.5", &policy);
    // The probe must have worked: these keys are part of the format's contract.
    for (t, k) in [
        ("defaults", "user_cert_ttl"),
        ("roles.*", "logins"),
        ("roles.*", "nodes"),
        ("users.*", "roles"),
    ] {
        assert!(code.keys.contains(&(t.into(), k.into())), "{code:?}");
    }
}

#[test]
fn every_posternd_toml_key_is_documented() {
    let code = check("posternd.toml.5", &posternd_toml);
    for (t, k) in [("", "cluster"), ("", "listen"), ("gateway", "public_addr")] {
        assert!(code.keys.contains(&(t.into(), k.into())), "{code:?}");
    }
}

#[test]
fn every_gate_toml_key_is_documented() {
    let code = check("postern-gate.toml.5", &gate_toml);
    assert!(
        code.keys.contains(&("".into(), "listen".into())),
        "{code:?}"
    );
}

#[test]
fn the_check_notices_an_undocumented_and_a_stale_key() {
    let code = keys_in_code(&policy);
    let mut page = keys_in_page(&common::page("postern-policy.toml.5"));
    assert!(compare("p", &code, &page).is_empty());
    page.keys
        .remove(&("roles.*".to_owned(), "max_ttl".to_owned()));
    page.keys
        .insert(("defaults".to_owned(), "no_such_key".to_owned()));
    let problems = compare("p", &code, &page);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("`roles.*.max_ttl`"), "{problems:?}");
    assert!(problems[1].contains("`no_such_key`"), "{problems:?}");
}

/// The TOML blocks of a page: blocks whose every line is blank, a comment, a `[table]` or a
/// `key = value`.
fn toml_blocks(file: &str) -> Vec<String> {
    blocks(&page(file))
        .into_iter()
        .filter(|b| {
            b.iter().all(|l| {
                let l = l.trim();
                l.is_empty() || l.starts_with('#') || l.starts_with('[') || l.contains(" = ")
            })
        })
        .map(|b| b.join("\n") + "\n")
        .collect()
}

#[test]
fn toml_examples_parse() {
    for (file, parse, min) in [
        ("postern-policy.toml.5", &policy as &Parse, 2),
        ("posternd.toml.5", &posternd_toml, 2),
        ("postern-gate.toml.5", &gate_toml, 1),
    ] {
        let examples = toml_blocks(file);
        assert!(examples.len() >= min, "{file}: {examples:?}");
        for text in examples {
            if let Err(e) = parse(&text) {
                panic!("an example of man/{file} does not parse: {e}\n{text}");
            }
        }
    }
}
